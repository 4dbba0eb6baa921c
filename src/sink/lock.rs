//! The overlap guard: one PostgreSQL advisory lock per target table, held on a
//! connection of its own for the whole run, so that two runs never load the same table at
//! once (cron firing while last night's load still runs, say).
//!
//! The key comes from the schema-qualified name ([`table_lock_key`]), so `-t orders` and
//! `-t public.orders` take the same lock. It is a session lock: the run releases it at the end,
//! and the server releases it by itself when the connection ends (a killed process leaves no
//! lock behind). This module owns the SQL of the guard; `import::record` decides when to take it.

use std::time::Duration;

use anyhow::Context;
use sha2::{Digest, Sha256};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool, Row};
use tracing::{debug, info};

use super::{TableName, quote_ident};

/// SQLSTATE lock_not_available: the `lock_timeout` of a wait expired.
const LOCK_NOT_AVAILABLE: &str = "55P03";

/// The advisory-lock key of the table `schema.table`: the first 8 bytes, read as a big-endian
/// signed integer, of the SHA-256 of the UTF-8 text `importer table "SCHEMA"."TABLE"` (each
/// name always in double quotes, a `"` inside doubled). Stable across runs, machines and
/// server versions (unlike `hashtext`), so that every `importer` agrees, and a script can
/// compute it in SQL (README gives the expression, and a test checks it against this).
pub fn table_lock_key(schema: &str, table: &str) -> i64 {
    advisory_key(&format!(
        "importer table {}.{}",
        quote_ident(schema),
        quote_ident(table)
    ))
}

/// An advisory-lock key for `text` (a name space of `importer`'s own).
pub(crate) fn advisory_key(text: &str) -> i64 {
    let digest = Sha256::digest(text.as_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(bytes)
}

/// The table's schema-qualified name as the server resolves it: for an existing table the
/// schema and name of the catalog entry that `table` finds (through the search path when
/// unqualified); for a missing one the given schema, or `current_schema()` (where it would
/// be created). Names longer than PostgreSQL's limit never get here (see `TableName::parse`),
/// so the server cannot truncate a name into another table's.
pub async fn qualify_table(pool: &PgPool, table: &TableName) -> anyhow::Result<TableName> {
    let resolved: (Option<String>, Option<String>) = sqlx::query_as(
        "SELECT coalesce(n.nspname::text, $2, current_schema()::text), c.relname::text
           FROM (SELECT to_regclass($1) AS oid) r
           LEFT JOIN pg_class c ON c.oid = r.oid
           LEFT JOIN pg_namespace n ON n.oid = c.relnamespace",
    )
    .bind(table.quoted())
    .bind(table.schema.as_deref())
    .fetch_one(pool)
    .await
    .with_context(|| format!("cannot find the schema of table {table}"))?;
    let (schema, name) = resolved;
    let schema = schema.with_context(|| {
        format!(
            "cannot tell which schema table {table} is in: no schema of the search_path exists; pass --table SCHEMA.{table}"
        )
    })?;
    Ok(TableName {
        schema: Some(schema),
        name: name.unwrap_or_else(|| table.name.clone()),
    })
}

/// The table's run lock is held by another run (and was not freed within the wait): the
/// error callers tell apart from a failure to reach the server.
#[derive(Debug)]
pub struct TableBusy(String);

impl std::fmt::Display for TableBusy {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(&self.0)
    }
}

impl std::error::Error for TableBusy {}

/// A table's run lock, held until [`TableLock::release`] (or until the process ends).
pub struct TableLock {
    connection: PgConnection,
    key: i64,
    table: TableName,
}

impl TableLock {
    /// Takes the run lock of `table` on a new connection. When another session holds it, fails
    /// at once naming the holder, or with `wait` waits up to that long for it first.
    pub async fn acquire(
        pool: &PgPool,
        table: &TableName,
        wait: Option<Duration>,
    ) -> anyhow::Result<TableLock> {
        let table = qualify_table(pool, table).await?;
        let schema = table
            .schema
            .as_deref()
            .expect("qualify_table gives a schema");
        let key = table_lock_key(schema, &table.name);
        // its own connection, named after this process so that the holder can be found
        let options = (*pool.connect_options())
            .clone()
            .application_name(&format!("importer pid {}", std::process::id()))
            // waiting for the lock is this connection's purpose, not a slow statement
            .log_slow_statements(tracing::log::LevelFilter::Off, Duration::ZERO);
        let mut connection = PgConnection::connect_with(&options)
            .await
            .with_context(|| format!("cannot open a connection to lock table {table}"))?;
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(key)
            .fetch_one(&mut connection)
            .await
            .with_context(|| format!("cannot lock table {table}"))?;
        if !locked {
            let holder = describe_holder(&mut connection, key).await?;
            let wait = wait.filter(|wait| !wait.is_zero());
            let Some(wait) = wait else {
                return Err(TableBusy(format!(
                    "table {table} is being loaded by another run ({holder}); try again once it has finished, or pass --wait-lock SECONDS to wait for it"
                ))
                .into());
            };
            info!(table = %table, holder = %holder, wait_seconds = wait.as_secs_f64(), "another run is loading the table; waiting for it");
            if !wait_for_lock(&mut connection, key, wait)
                .await
                .with_context(|| format!("cannot lock table {table}"))?
            {
                let holder = describe_holder(&mut connection, key).await?;
                return Err(TableBusy(format!(
                    "table {table} is still being loaded by another run after waiting {} s (--wait-lock {}) ({holder}); try again once it has finished",
                    wait.as_secs_f64(),
                    wait.as_secs_f64()
                ))
                .into());
            }
        }
        debug!(table = %table, key, "took the table's run lock");
        Ok(TableLock {
            connection,
            key,
            table,
        })
    }

    /// The locked table, schema-qualified.
    pub fn table(&self) -> &TableName {
        &self.table
    }

    /// The lock's advisory key.
    pub fn key(&self) -> i64 {
        self.key
    }

    /// The pid of the server backend that holds the lock, for the fence (see
    /// `sink::chunks::take_fence`): writers check that this backend still holds it.
    pub async fn backend_pid(&mut self) -> anyhow::Result<i32> {
        sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&mut self.connection)
            .await
            .with_context(|| format!("cannot read the lock connection of table {}", self.table))
    }

    /// Releases the lock and closes its connection.
    pub async fn release(mut self) -> anyhow::Result<()> {
        let table = self.table.clone();
        sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(self.key)
            .execute(&mut self.connection)
            .await
            .with_context(|| format!("cannot release the run lock of table {table}"))?;
        self.connection
            .close()
            .await
            .with_context(|| format!("cannot close the lock connection of table {table}"))?;
        Ok(())
    }
}

/// Blocks in `pg_advisory_lock` for at most `wait` (as `lock_timeout`); false when it expired.
/// Blocking on the server, rather than polling, puts this session in the lock's queue (fair to
/// other waiters) and shows it in pg_locks as waiting.
async fn wait_for_lock(
    connection: &mut PgConnection,
    key: i64,
    wait: Duration,
) -> Result<bool, sqlx::Error> {
    // lock_timeout is an int of milliseconds; 0 would mean "no limit"
    let milliseconds = wait.as_millis().clamp(1, i32::MAX as u128);
    sqlx::query("SELECT set_config('lock_timeout', $1, false)")
        .bind(format!("{milliseconds}ms"))
        .execute(&mut *connection)
        .await?;
    let waited = sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(key)
        .execute(&mut *connection)
        .await;
    let locked = match waited {
        Ok(_) => true,
        Err(sqlx::Error::Database(error))
            if error.code().as_deref() == Some(LOCK_NOT_AVAILABLE) =>
        {
            false
        }
        Err(error) => return Err(error),
    };
    sqlx::query("SELECT set_config('lock_timeout', '0', false)")
        .execute(&mut *connection)
        .await?;
    Ok(locked)
}

/// Who holds the lock `key`, from pg_locks and pg_stat_activity: backend pid, application,
/// client and since when it is connected (for an `importer`, about when its run started).
async fn describe_holder(connection: &mut PgConnection, key: i64) -> anyhow::Result<String> {
    // a bigint advisory key shows in pg_locks as classid (high half), objid (low half), objsubid 1
    let bits = key as u64;
    let (high, low) = ((bits >> 32) as i64, (bits & 0xffff_ffff) as i64);
    let holder = sqlx::query(
        "SELECT l.pid, a.application_name::text AS application, host(a.client_addr) AS client,
                to_char(a.backend_start, 'YYYY-MM-DD HH24:MI:SS TZ') AS since
           FROM pg_locks l
           LEFT JOIN pg_stat_activity a ON a.pid = l.pid
          WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
            AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
            AND l.classid::bigint = $1 AND l.objid::bigint = $2
          LIMIT 1",
    )
    .bind(high)
    .bind(low)
    .fetch_optional(connection)
    .await
    .context("cannot read pg_locks to find the run holding the table")?;
    let Some(holder) = holder else {
        return Ok("its holder has just let go or cannot be seen".to_string());
    };
    let read = || -> Result<_, sqlx::Error> {
        Ok((
            holder.try_get::<i32, _>("pid")?,
            holder.try_get::<Option<String>, _>("application")?,
            holder.try_get::<Option<String>, _>("client")?,
            holder.try_get::<Option<String>, _>("since")?,
        ))
    };
    let (pid, application, client, since) =
        read().context("cannot read pg_locks to find the run holding the table")?;
    let mut parts = vec![format!("held by PostgreSQL backend pid {pid}")];
    if let Some(application) = application.filter(|name| !name.is_empty()) {
        parts.push(format!("application {application:?}"));
    }
    parts.push(format!(
        "client {}",
        client.as_deref().unwrap_or("local socket")
    ));
    if let Some(since) = since {
        parts.push(format!("connected since {since}"));
    }
    Ok(parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_keys_differ_by_schema_and_table_and_never_by_run() {
        let key = table_lock_key("public", "orders");
        assert_eq!(key, table_lock_key("public", "orders"));
        assert_ne!(key, table_lock_key("sales", "orders"));
        assert_ne!(key, table_lock_key("public", "Orders"));
        // quoting keeps a dot inside a name apart from the separator
        assert_ne!(
            table_lock_key("a.b", "c"),
            table_lock_key("a", "b.c"),
            "a dot inside a name is not the separator"
        );
    }
}
