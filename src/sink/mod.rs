//! The database side: connecting, identifier quoting, reading the target table from the
//! catalog and creating a missing one. `insert` builds INSERTs and `copy` encodes COPY data.
//!
//! Identifiers from files and flags pass through [`quote_ident`], and only there. Values are
//! never formatted into SQL: they are bound, or COPY-encoded.

pub mod chunks;
pub mod copy;
pub mod insert;
pub mod ledger;
pub mod lock;
pub mod staging;

use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool, Row};
use tracing::warn;

use crate::schema::{Column, ColumnType, InferredType};

/// How long a worker waits for a pooled connection before the run fails.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(30);

/// The first pause between two attempts at the first connection; doubled after each.
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(250);

/// The longest pause between two attempts at the first connection.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(4);

/// The least time one connection attempt is given, even when --connect-timeout is nearly over.
const MIN_ATTEMPT_TIME: Duration = Duration::from_secs(1);

/// SQLSTATE cannot_connect_now: "the database system is starting up" (or in recovery).
const CANNOT_CONNECT_NOW: &str = "57P03";

/// SQLSTATE classes whose errors concern the row's data, not the run: 22 data exception,
/// 23 integrity constraint violation, P0 PL/pgSQL raise (a trigger refusing the row).
const ROW_ERROR_CLASSES: [&str; 3] = ["22", "23", "P0"];

/// Quotes an identifier for PostgreSQL: `a"b` -> `"a""b"`.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A table name as given: `orders` or `sales.orders`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableName {
    /// The schema, when the name was qualified.
    pub schema: Option<String>,
    /// The table itself.
    pub name: String,
}

impl TableName {
    /// Parses `NAME` or `SCHEMA.NAME` (split at the first dot).
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let (schema, name) = match text.split_once('.') {
            Some((schema, name)) => (Some(schema.to_string()), name.to_string()),
            None => (None, text.to_string()),
        };
        if name.is_empty() || schema.as_deref().is_some_and(str::is_empty) {
            bail!("invalid table name {text:?}: expected NAME or SCHEMA.NAME");
        }
        Ok(TableName { schema, name })
    }

    /// The quoted, possibly qualified name for SQL.
    pub fn quoted(&self) -> String {
        match &self.schema {
            Some(schema) => format!("{}.{}", quote_ident(schema), quote_ident(&self.name)),
            None => quote_ident(&self.name),
        }
    }
}

impl std::fmt::Display for TableName {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.schema {
            Some(schema) => write!(formatter, "{schema}.{}", self.name),
            None => write!(formatter, "{}", self.name),
        }
    }
}

/// The target table as the catalog describes it.
#[derive(Debug, Clone)]
pub struct TargetTable {
    /// The name as given.
    pub name: TableName,
    /// Its columns in table order.
    pub columns: Vec<Column>,
}

/// Connects to `url` and returns a pool of up to `max_connections`. The first connection is
/// made here, so that an unreachable server or a wrong password fails with a clear message
/// (which never contains the password). While the server is unreachable or starting up, that
/// first connection is retried with backoff for up to `connect_timeout` (issue 4: a nightly
/// run should outlast a server restart); a wrong password or database fails at once.
pub async fn connect(
    url: &str,
    max_connections: u32,
    connect_timeout: Duration,
) -> anyhow::Result<PgPool> {
    let options = PgConnectOptions::from_str(url)
        .map_err(|_| anyhow::anyhow!("invalid --database-url / DATABASE_URL: expected postgres://USER:PASSWORD@HOST:PORT/DATABASE"))?
        .application_name("importer")
        // every chunk commits on its own; waiting for each commit's WAL flush would leave
        // the server idle between chunks, so commits are asynchronous and `flush_commits`
        // makes them all durable, in one synchronous commit, before the stats are printed
        .options([("synchronous_commit", "off")])
        .log_statements(tracing::log::LevelFilter::Trace);
    let server = describe_server(&options);
    connect_first(&options, &server, connect_timeout)
        .await?
        .close()
        .await
        .ok();
    Ok(PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_lazy_with(options))
}

/// Opens a new connection with the pool's options, retried like the first one for up to
/// `connect_timeout`: for the end of a run whose connections were lost (a server restart).
pub async fn reconnect(pool: &PgPool, connect_timeout: Duration) -> anyhow::Result<PgConnection> {
    let options = (*pool.connect_options()).clone();
    connect_first(&options, &describe_server(&options), connect_timeout).await
}

/// The server, database and user of `options`, for messages (never the password).
fn describe_server(options: &PgConnectOptions) -> String {
    format!(
        "{}:{} (database {:?}, user {:?})",
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap_or(options.get_username()),
        options.get_username()
    )
}

/// Makes the first connection, retrying connection-level failures (see [`is_transient`])
/// with exponential backoff until `connect_timeout` has passed; 0 means one attempt.
async fn connect_first(
    options: &PgConnectOptions,
    server: &str,
    connect_timeout: Duration,
) -> anyhow::Result<PgConnection> {
    let started = Instant::now();
    let deadline = started + connect_timeout;
    let mut delay = FIRST_RETRY_DELAY;
    let mut attempt_count: u32 = 0;
    loop {
        attempt_count += 1;
        let attempt = PgConnection::connect_with(options);
        let result = if connect_timeout.is_zero() {
            attempt.await
        } else {
            // a server that drops packets would hold one attempt for the OS's TCP timeout
            let bound = deadline
                .saturating_duration_since(Instant::now())
                .max(MIN_ATTEMPT_TIME);
            tokio::time::timeout(bound, attempt)
                .await
                .unwrap_or_else(|_| {
                    Err(sqlx::Error::Io(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "no answer from the server",
                    )))
                })
        };
        let error = match result {
            Ok(connection) => return Ok(connection),
            Err(error) if is_transient(&error) => error,
            Err(error) => return Err(connection_error(error, server)),
        };
        let now = Instant::now();
        if now >= deadline {
            let tried = if connect_timeout.is_zero() {
                "tried once (--connect-timeout 0)".to_string()
            } else {
                format!(
                    "gave up after {:.1} s and {attempt_count} attempt{} (--connect-timeout {})",
                    now.duration_since(started).as_secs_f64(),
                    if attempt_count == 1 { "" } else { "s" },
                    connect_timeout.as_secs()
                )
            };
            let error = connection_error(error, server);
            return Err(anyhow::anyhow!("{error:#}; {tried}"));
        }
        let pause = delay.min(deadline - now);
        warn!(
            server,
            attempt = attempt_count,
            retry_in_seconds = pause.as_millis() as f64 / 1000.0,
            error = %error_message(&error),
            "cannot connect to PostgreSQL yet; retrying"
        );
        tokio::time::sleep(pause).await;
        delay = (delay * 2).min(MAX_RETRY_DELAY);
    }
}

/// Whether a failed connection attempt may succeed later: an I/O error (refused, reset,
/// unreachable, timed out) or a server that is starting up. Not: authentication, a missing
/// database, TLS.
fn is_transient(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_) => true,
        sqlx::Error::Database(database) => database.code().as_deref() == Some(CANNOT_CONNECT_NOW),
        _ => false,
    }
}

fn connection_error(error: sqlx::Error, server: &str) -> anyhow::Error {
    match &error {
        sqlx::Error::Database(database) if database.code().as_deref() == Some("28P01") => {
            anyhow::anyhow!(
                "cannot connect to PostgreSQL at {server}: password authentication failed; check the user and password in --database-url / DATABASE_URL"
            )
        }
        sqlx::Error::Database(database) => {
            anyhow::anyhow!(
                "cannot connect to PostgreSQL at {server}: {}",
                database.message()
            )
        }
        sqlx::Error::Io(io) => anyhow::anyhow!(
            "cannot connect to PostgreSQL at {server}: {io}; start one with `docker compose up -d --wait`, or point --database-url / DATABASE_URL at a running server"
        ),
        other => anyhow::anyhow!("cannot connect to PostgreSQL at {server}: {other}"),
    }
}

/// Waits until every commit made so far on this server is durable: one synchronous commit
/// flushes the write-ahead log up to its own record, and so past every earlier commit,
/// whichever session made it.
pub async fn flush_commits(pool: &PgPool) -> anyhow::Result<()> {
    sqlx::raw_sql("BEGIN; SET LOCAL synchronous_commit TO on; SELECT txid_current(); COMMIT;")
        .execute(pool)
        .await
        .context("cannot confirm that the rows written are durable")?;
    Ok(())
}

/// Runs one statement whose result is not needed (DDL); `what` names it for the error.
pub(crate) async fn execute(
    pool: &PgPool,
    sql: &str,
    what: impl FnOnce() -> String,
) -> anyhow::Result<()> {
    sqlx::query(sql).execute(pool).await.with_context(what)?;
    Ok(())
}

/// Whether a server error is about the row's data (reject the row) rather than the run.
pub fn is_row_error(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(database) => database.code().is_some_and(|code| {
            ROW_ERROR_CLASSES
                .iter()
                .any(|class| code.starts_with(class))
        }),
        _ => false,
    }
}

/// The column a server error names, if any (PostgreSQL sets it for NOT NULL violations).
pub fn error_column(error: &sqlx::Error) -> String {
    match error {
        sqlx::Error::Database(database) => database
            .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
            .and_then(|pg| pg.column())
            .unwrap_or_default()
            .to_string(),
        _ => String::new(),
    }
}

/// The server's own message for an error, without sqlx's prefix.
pub fn error_message(error: &sqlx::Error) -> String {
    match error {
        sqlx::Error::Database(database) => database.message().to_string(),
        other => other.to_string(),
    }
}

/// Reads the table's columns from the catalog; `None` when the table does not exist.
pub async fn load_table(pool: &PgPool, name: &TableName) -> anyhow::Result<Option<TargetTable>> {
    let oid: Option<sqlx::postgres::types::Oid> = sqlx::query_scalar("SELECT to_regclass($1)::oid")
        .bind(name.quoted())
        .fetch_one(pool)
        .await
        .with_context(|| format!("cannot look up table {name}"))?;
    let Some(oid) = oid else {
        return Ok(None);
    };
    let rows = sqlx::query(
        "SELECT a.attname::text AS name, t.typname::text AS type_name,
                format_type(a.atttypid, a.atttypmod) AS sql_type, a.attnotnull AS not_null,
                (a.atthasdef OR a.attidentity <> '' OR a.attgenerated <> '') AS has_default,
                pg_get_expr(d.adbin, d.adrelid) AS default_sql
           FROM pg_attribute a
           JOIN pg_type t ON t.oid = a.atttypid
           LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
          WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped
          ORDER BY a.attnum",
    )
    .bind(oid)
    .fetch_all(pool)
    .await
    .with_context(|| format!("cannot read the columns of table {name}"))?;
    let columns = rows
        .iter()
        .map(|row| {
            let type_name: String = row.try_get("type_name")?;
            Ok(Column {
                name: row.try_get("name")?,
                column_type: ColumnType::from_type_name(&type_name),
                sql_type: row.try_get("sql_type")?,
                not_null: row.try_get("not_null")?,
                has_default: row.try_get("has_default")?,
                default_sql: row.try_get("default_sql")?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()
        .with_context(|| format!("cannot read the columns of table {name}"))?;
    Ok(Some(TargetTable {
        name: name.clone(),
        columns,
    }))
}

/// Creates the table with one column per folded header name and its inferred type.
pub async fn create_table(
    pool: &PgPool,
    name: &TableName,
    column_names: &[String],
    column_types: &[InferredType],
) -> anyhow::Result<()> {
    let definitions: Vec<String> = column_names
        .iter()
        .zip(column_types)
        .map(|(column, inferred)| format!("{} {}", quote_ident(column), inferred.sql_type()))
        .collect();
    let sql = format!(
        "CREATE TABLE IF NOT EXISTS {} ({})",
        name.quoted(),
        definitions.join(", ")
    );
    execute(pool, &sql, || format!("cannot create table {name}")).await?;
    Ok(())
}

/// Upsert's `ON CONFLICT` clause for the key columns of `columns` (the sheet's columns):
/// fatal unless a unique index or primary key covers exactly the key columns.
pub async fn conflict_clause(
    pool: &PgPool,
    table: &TableName,
    columns: &[Column],
    key_positions: &[usize],
) -> anyhow::Result<String> {
    let keys: Vec<String> = key_positions
        .iter()
        .map(|&position| columns[position].name.clone())
        .collect();
    let has_unique_index: bool = sqlx::query_scalar(
        "SELECT EXISTS (
            SELECT 1 FROM pg_index i
             WHERE i.indrelid = to_regclass($1) AND i.indisunique
               AND i.indpred IS NULL AND i.indexprs IS NULL
               AND i.indnkeyatts = cardinality($2::text[])
               AND ARRAY(SELECT a.attname::text FROM pg_attribute a
                          WHERE a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey[0:i.indnkeyatts - 1]))
                   @> $2::text[])",
    )
    .bind(table.quoted())
    .bind(&keys)
    .fetch_one(pool)
    .await
    .with_context(|| format!("cannot read the unique indexes of table {table}"))?;
    let key_list: Vec<String> = keys.iter().map(|key| quote_ident(key)).collect();
    let key_list = key_list.join(", ");
    if !has_unique_index {
        bail!(
            "--mode upsert needs a unique index or primary key on exactly ({key_list}) of table {table}; create one with: CREATE UNIQUE INDEX ON {} ({key_list})",
            table.quoted()
        );
    }
    let updates: Vec<String> = columns
        .iter()
        .enumerate()
        .filter(|(position, _)| !key_positions.contains(position))
        .map(|(_, column)| {
            let name = quote_ident(&column.name);
            format!("{name} = EXCLUDED.{name}")
        })
        .collect();
    Ok(if updates.is_empty() {
        format!("ON CONFLICT ({key_list}) DO NOTHING")
    } else {
        format!(
            "ON CONFLICT ({key_list}) DO UPDATE SET {}",
            updates.join(", ")
        )
    })
}

/// Creates `copy` shaped like `target`, with what `including` names (`INCLUDING ALL`, ...).
pub async fn create_table_like(
    pool: &PgPool,
    target: &TableName,
    copy: &TableName,
    including: &str,
) -> anyhow::Result<()> {
    let sql = format!(
        "CREATE TABLE {} (LIKE {} {including})",
        copy.quoted(),
        target.quoted()
    );
    execute(pool, &sql, || {
        format!("cannot create table {copy} like {target}")
    })
    .await
}

/// Drops a table if it exists.
pub async fn drop_table(pool: &PgPool, name: &TableName) -> anyhow::Result<()> {
    let sql = format!("DROP TABLE IF EXISTS {}", name.quoted());
    execute(pool, &sql, || format!("cannot drop table {name}")).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted_and_names_split_at_the_first_dot() {
        assert_eq!(quote_ident(r#"we"ird"#), r#""we""ird""#);
        let qualified = TableName::parse("Sales.Orders 2024").unwrap();
        assert_eq!(qualified.quoted(), r#""Sales"."Orders 2024""#);
        assert_eq!(qualified.to_string(), "Sales.Orders 2024");
        assert_eq!(TableName::parse("t").unwrap().quoted(), r#""t""#);
        assert!(TableName::parse("sales.").is_err());
        assert!(TableName::parse(".t").is_err());
    }
}
