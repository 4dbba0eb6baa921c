//! Staging tables for `--mode replace`, `--mode upsert --atomic` and `--atomic`: the rows go
//! into a table of the target's shape that no reader looks at, and reach the target in one
//! transaction at the end (a swap for replace, an INSERT ... SELECT otherwise).
//!
//! SQL only; `cmd::mode` decides when each step runs. Names come from the catalog or from
//! `TableName`, and pass through `quote_ident`.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use sqlx::{ConnectOptions, Connection, Executor, PgConnection, PgPool, Row};
use tracing::{debug, info};

use crate::schema::Column;
use crate::sink::chunks::{self, ChunkLedger};
use crate::sink::{TableName, create_table_like, execute, quote_ident};

/// A non-unique index of the target, rebuilt on the staging table after the load.
#[derive(Debug, Clone)]
pub struct SecondaryIndex {
    /// The target's index name (the staging copy takes it over at the swap).
    pub name: String,
    /// `pg_get_indexdef` after ` USING `: method, columns, options, predicate.
    pub definition: String,
}

/// How `swap_in` put the staging rows into the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Published {
    /// The staging table took the target's place (renamed in one transaction).
    Swapped,
    /// The target kept its identity (it has grants, triggers, dependants, ...): it was
    /// emptied and refilled from the staging table in one transaction.
    Refilled,
}

/// The name of a table that lives for one run only, `{prefix}_{pid}_{random}`: unique per
/// run, not per process, since a service runs several imports at once in one process, and in
/// a container every start has the same pid (the pid stays for telling runs apart in
/// `pg_class`). It stays far below PostgreSQL's 63 bytes, with room for the
/// `_index_N` names derived from it.
pub fn run_table_name(prefix: &str) -> String {
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}_{}_{}", std::process::id(), &random[..12])
}

/// Creates `staging` with the target's columns, defaults, constraints and unique indexes,
/// but none of its other indexes (they are built after the load, which is faster).
/// Returns the secondary indexes to rebuild.
pub async fn create_for_replace(
    pool: &PgPool,
    target: &TableName,
    staging: &TableName,
) -> anyhow::Result<Vec<SecondaryIndex>> {
    create_table_like(pool, target, staging, "INCLUDING ALL").await?;
    for index in secondary_indexes(pool, staging).await? {
        let drop = format!(
            "DROP INDEX {}",
            qualified(staging.schema.as_deref(), &index.name)
        );
        execute(pool, &drop, || {
            format!(
                "cannot drop index {} of staging table {staging}",
                index.name
            )
        })
        .await?;
    }
    secondary_indexes(pool, target).await
}

/// Creates `staging` with the target's columns, defaults and CHECK/NOT NULL constraints and
/// no indexes: the table an atomic append or upsert loads into before publishing.
pub async fn create_for_publish(
    pool: &PgPool,
    target: &TableName,
    staging: &TableName,
) -> anyhow::Result<()> {
    create_table_like(
        pool,
        target,
        staging,
        "INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING GENERATED",
    )
    .await
}

/// Builds the target's secondary indexes on the loaded staging table, logging each at info.
/// They run on a connection of their own whose slow-statement logging is off: a long index
/// build is expected work, not a warning.
pub async fn build_indexes(
    pool: &PgPool,
    staging: &TableName,
    indexes: &[SecondaryIndex],
) -> anyhow::Result<()> {
    let options = (*pool.connect_options())
        .clone()
        .log_slow_statements(tracing::log::LevelFilter::Off, Duration::ZERO);
    let mut connection = PgConnection::connect_with(&options)
        .await
        .with_context(|| format!("cannot connect to build the indexes of {staging}"))?;
    for (position, index) in indexes.iter().enumerate() {
        let sql = format!(
            "CREATE INDEX {} ON {} USING {}",
            quote_ident(&staging_index_name(staging, position)),
            staging.quoted(),
            index.definition
        );
        info!(index = %index.name, "building index");
        sqlx::query(&sql)
            .execute(&mut connection)
            .await
            .with_context(|| {
                format!(
                    "cannot build index {} on staging table {staging}",
                    index.name
                )
            })?;
    }
    // a fresh table has no planner statistics: gather them before readers see it
    let analyze = format!("ANALYZE {}", staging.quoted());
    sqlx::query(&analyze)
        .execute(&mut connection)
        .await
        .with_context(|| format!("cannot analyze staging table {staging}"))?;
    connection.close().await.ok();
    Ok(())
}

/// Puts the staging rows in the target's place in one transaction, so readers see the old
/// rows until the commit and the new ones after it, never an empty table. The staging table
/// is renamed over the target when nothing hangs on the target's identity; otherwise the
/// target is refilled (see [`refill`]).
///
/// The swap needs an ACCESS EXCLUSIVE lock on the target, and while it waits for one every
/// new reader queues behind it. So each attempt waits at most a short `lock_timeout` (from
/// [`FIRST_LOCK_WAIT`] up to [`MAX_LOCK_WAIT`]), and a refused attempt is retried with backoff
/// until `swap_timeout` has passed; then the swap fails and the target stays as it was.
pub async fn swap_in(
    pool: &PgPool,
    staging: &TableName,
    target: &TableName,
    swap_timeout: Duration,
    fence: Option<&ChunkLedger>,
) -> anyhow::Result<Published> {
    let mut connection = pool
        .acquire()
        .await
        .context("cannot get a connection to publish")?;
    let started = Instant::now();
    let deadline = started + swap_timeout;
    let mut lock_wait = FIRST_LOCK_WAIT;
    let mut pause = FIRST_LOCK_PAUSE;
    let mut attempt_count: u32 = 0;
    loop {
        attempt_count += 1;
        let wait = lock_wait
            .min(deadline.saturating_duration_since(Instant::now()))
            .max(Duration::from_millis(1));
        match try_swap_in(&mut connection, staging, target, wait, fence).await {
            Ok(published) => return Ok(published),
            // the lock timeout itself says nothing more than the message below
            Err(error) if is_lock_timeout(&error) => {}
            Err(error) => return Err(error),
        }
        let now = Instant::now();
        if now >= deadline {
            let blockers = describe_blockers(&mut connection, target)
                .await
                .unwrap_or_else(|_| "its holders cannot be seen".to_string());
            bail!(
                "table {target} stayed as it was: the lock to swap in the new rows was not granted within {:.1} s and {attempt_count} attempts (--swap-timeout {}); {blockers}",
                now.duration_since(started).as_secs_f64(),
                swap_timeout.as_secs()
            );
        }
        debug!(table = %target, attempt = attempt_count, "the table is busy; retrying the swap");
        tokio::time::sleep(pause.min(deadline - now)).await;
        lock_wait = (lock_wait * 2).min(MAX_LOCK_WAIT);
        pause = (pause * 2).min(MAX_LOCK_PAUSE);
    }
}

/// The longest the first swap attempt waits for its lock (and so holds readers up).
pub const FIRST_LOCK_WAIT: Duration = Duration::from_millis(100);
/// The longest any swap attempt waits for its lock.
pub const MAX_LOCK_WAIT: Duration = Duration::from_secs(1);
/// The first pause between two swap attempts; doubled after each.
const FIRST_LOCK_PAUSE: Duration = Duration::from_millis(100);
/// The longest pause between two swap attempts.
const MAX_LOCK_PAUSE: Duration = Duration::from_secs(2);

/// SQLSTATE lock_not_available: a `lock_timeout` expired.
const LOCK_NOT_AVAILABLE: &str = "55P03";

/// Whether `error` (anywhere in its chain) is a lock that was not granted in time.
fn is_lock_timeout(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<sqlx::Error>(),
            Some(sqlx::Error::Database(database)) if database.code().as_deref() == Some(LOCK_NOT_AVAILABLE)
        )
    })
}

/// Who holds a lock on `table`, from pg_locks and pg_stat_activity (for the error message).
async fn describe_blockers(
    connection: &mut PgConnection,
    table: &TableName,
) -> anyhow::Result<String> {
    let rows = sqlx::query(
        "SELECT l.pid, l.mode::text AS mode, a.application_name::text AS application,
                a.state::text AS state, extract(epoch FROM now() - a.xact_start)::float8 AS seconds
           FROM pg_locks l
           LEFT JOIN pg_stat_activity a ON a.pid = l.pid
          WHERE l.relation = to_regclass($1) AND l.granted AND l.pid <> pg_backend_pid()
          ORDER BY a.xact_start NULLS LAST
          LIMIT 5",
    )
    .bind(table.quoted())
    .fetch_all(&mut *connection)
    .await?;
    if rows.is_empty() {
        return Ok("its holders have let go since or cannot be seen".to_string());
    }
    let holders = rows
        .iter()
        .map(|row| {
            let pid: i32 = row.try_get("pid")?;
            let mode: String = row.try_get("mode")?;
            let application: Option<String> = row.try_get("application")?;
            let state: Option<String> = row.try_get("state")?;
            let seconds: Option<f64> = row.try_get("seconds")?;
            let mut parts = vec![format!("backend pid {pid} ({mode}")];
            if let Some(application) = application.filter(|name| !name.is_empty()) {
                parts.push(format!("application {application:?}"));
            }
            if let Some(state) = state {
                parts.push(state);
            }
            if let Some(seconds) = seconds {
                parts.push(format!("in a transaction for {seconds:.0} s"));
            }
            Ok(format!("{})", parts.join(", ")))
        })
        .collect::<Result<Vec<String>, sqlx::Error>>()?;
    Ok(format!("held by {}", holders.join(", ")))
}

/// One attempt at [`swap_in`], whose locks wait at most `lock_wait`.
async fn try_swap_in(
    connection: &mut PgConnection,
    staging: &TableName,
    target: &TableName,
    lock_wait: Duration,
    fence: Option<&ChunkLedger>,
) -> anyhow::Result<Published> {
    let mut transaction = connection.begin().await?;
    // the sessions commit asynchronously (see sink::connect); this commit is the one that
    // publishes, so it waits for its flush
    sqlx::query("SET LOCAL synchronous_commit TO on")
        .execute(&mut *transaction)
        .await?;
    // for every lock of the transaction (the target's, and those on tables referencing it)
    sqlx::query("SELECT set_config('lock_timeout', $1, true)")
        .bind(format!("{}ms", lock_wait.as_millis().max(1)))
        .execute(&mut *transaction)
        .await?;
    check_fence(&mut transaction, fence, target).await?;
    let lock = format!("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE", target.quoted());
    sqlx::query(&lock)
        .execute(&mut *transaction)
        .await
        .with_context(|| format!("cannot lock table {target} to swap in the new rows"))?;
    let holds_identity: bool = sqlx::query_scalar(IDENTITY_MATTERS_SQL)
        .bind(target.quoted())
        .fetch_one(&mut *transaction)
        .await
        .with_context(|| format!("cannot inspect table {target}"))?;
    if holds_identity {
        refill(&mut transaction, staging, target).await?;
        transaction.commit().await?;
        return Ok(Published::Refilled);
    }
    // sequences owned by the target's columns (serial) feed the staging defaults too: hand
    // them over before the target is dropped
    let sequences: Vec<(String, String)> = sqlx::query(
        "SELECT s.oid::regclass::text AS sequence, quote_ident(a.attname) AS column_name
           FROM pg_depend d
           JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
           JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
          WHERE d.refobjid = to_regclass($1) AND d.deptype = 'a'",
    )
    .bind(target.quoted())
    .fetch_all(&mut *transaction)
    .await
    .with_context(|| format!("cannot read the sequences of table {target}"))?
    .iter()
    .map(|row| Ok((row.try_get("sequence")?, row.try_get("column_name")?)))
    .collect::<Result<_, sqlx::Error>>()?;
    let retired = TableName {
        schema: target.schema.clone(),
        name: run_table_name("importer_retired"),
    };
    // after the swap, every index of the new table takes the name of its twin on the old one
    let renames = index_renames(&mut transaction, staging, target).await?;
    let mut statements: Vec<String> = sequences
        .iter()
        .map(|(sequence, column)| {
            format!(
                "ALTER SEQUENCE {sequence} OWNED BY {}.{column}",
                staging.quoted()
            )
        })
        .collect();
    statements.push(format!(
        "ALTER TABLE {} RENAME TO {}",
        target.quoted(),
        quote_ident(&retired.name)
    ));
    statements.push(format!(
        "ALTER TABLE {} RENAME TO {}",
        staging.quoted(),
        quote_ident(&target.name)
    ));
    statements.push(format!("DROP TABLE {}", retired.quoted()));
    for (staging_index, target_index) in renames {
        statements.push(format!(
            "ALTER INDEX {} RENAME TO {}",
            qualified(target.schema.as_deref(), &staging_index),
            quote_ident(&target_index)
        ));
    }
    for statement in &statements {
        sqlx::query(statement)
            .execute(&mut *transaction)
            .await
            .with_context(|| format!("cannot swap the staging table in for {target}"))?;
    }
    transaction.commit().await?;
    info!(table = %target, "new rows swapped in");
    Ok(Published::Swapped)
}

/// A foreign key that references the target: `table (columns)` -> target `(key)`.
#[derive(Debug, Clone)]
struct ReferencingKey {
    constraint: String,
    /// The referencing table as SQL (`regclass` text: quoted and qualified where needed).
    table: String,
    /// Whether the target references itself; its referencing rows are then the new ones.
    is_self_reference: bool,
    columns: Vec<String>,
    key: Vec<String>,
}

/// Refills the target from the staging table inside `transaction`, which holds the
/// target's ACCESS EXCLUSIVE lock: the target keeps its identity (grants, triggers, views,
/// foreign keys...) and ends with exactly the staging rows.
///
/// TRUNCATE is refused for a table that foreign keys reference, and deleting every row
/// fails those keys before the new rows are in. So then, in the same transaction: every
/// non-NULL key value held by a referencing row must be among the new rows (else the refill
/// fails naming the constraint and the first missing key, the target untouched); the rows
/// whose referenced key the new rows do not have are deleted (no row references them, so no
/// `ON DELETE` action fires) and the new rows are upserted on that key.
async fn refill(
    transaction: &mut PgConnection,
    staging: &TableName,
    target: &TableName,
) -> anyhow::Result<()> {
    let columns: Vec<(String, bool)> = sqlx::query_as(
        "SELECT attname::text, attidentity = 'a' FROM pg_attribute
          WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped
            AND attgenerated = ''
          ORDER BY attnum",
    )
    .bind(target.quoted())
    .fetch_all(&mut *transaction)
    .await
    .with_context(|| format!("cannot read the columns of table {target}"))?;
    let column_list: Vec<String> = columns.iter().map(|(name, _)| quote_ident(name)).collect();
    let column_list = column_list.join(", ");
    let (target_sql, staging_sql) = (target.quoted(), staging.quoted());
    let referencing = referencing_keys(transaction, target).await?;
    let Some(first) = referencing.first() else {
        let refill = format!(
            "TRUNCATE {target_sql}; INSERT INTO {target_sql} ({column_list}) OVERRIDING SYSTEM VALUE SELECT {column_list} FROM {staging_sql}; DROP TABLE {staging_sql}"
        );
        // through `Executor`: `RawSql::execute` on a transaction leaves the import's future
        // not provably `Send`, so a service could not spawn it
        (&mut *transaction)
            .execute(sqlx::raw_sql(&refill))
            .await
            .with_context(|| format!("cannot refill table {target} from the staging table"))?;
        return Ok(());
    };
    for reference in &referencing {
        check_references_kept(transaction, staging, target, reference).await?;
    }
    // the rows are matched on one referenced key (the primary key when a foreign key uses it)
    let key = first.key.clone();
    let matches: Vec<String> = key
        .iter()
        .map(|column| {
            let column = quote_ident(column);
            format!("s.{column} = t.{column}")
        })
        .collect();
    let updates: Vec<String> = columns
        .iter()
        .filter(|(name, always_identity)| !key.contains(name) && !always_identity)
        .map(|(name, _)| {
            let name = quote_ident(name);
            format!("{name} = EXCLUDED.{name}")
        })
        .collect();
    let key_list: Vec<String> = key.iter().map(|column| quote_ident(column)).collect();
    let on_conflict = if updates.is_empty() {
        format!("ON CONFLICT ({}) DO NOTHING", key_list.join(", "))
    } else {
        format!(
            "ON CONFLICT ({}) DO UPDATE SET {}",
            key_list.join(", "),
            updates.join(", ")
        )
    };
    let refill = format!(
        "DELETE FROM {target_sql} t WHERE NOT EXISTS (SELECT 1 FROM {staging_sql} s WHERE {matches});
         INSERT INTO {target_sql} ({column_list}) OVERRIDING SYSTEM VALUE SELECT {column_list} FROM {staging_sql} {on_conflict};
         DROP TABLE {staging_sql}",
        matches = matches.join(" AND ")
    );
    // through `Executor`: `RawSql::execute` on a transaction leaves the import's future
    // not provably `Send`, so a service could not spawn it
    (&mut *transaction)
        .execute(sqlx::raw_sql(&refill))
        .await
        .with_context(|| {
            format!("cannot refill table {target} from the staging table; the table is unchanged")
        })?;
    Ok(())
}

/// The foreign keys that reference `target`, the ones on its primary key first.
async fn referencing_keys(
    connection: &mut PgConnection,
    target: &TableName,
) -> anyhow::Result<Vec<ReferencingKey>> {
    let names = |side: &str| {
        format!(
            "ARRAY(SELECT a.attname::text FROM unnest(con.{side}key) WITH ORDINALITY k(attnum, position)
                     JOIN pg_attribute a ON a.attrelid = con.{side}relid AND a.attnum = k.attnum
                    ORDER BY k.position)"
        )
    };
    let sql = format!(
        "SELECT con.conname::text, con.conrelid::regclass::text, con.conrelid = con.confrelid,
                {}, {}
           FROM pg_constraint con
          WHERE con.contype = 'f' AND con.confrelid = to_regclass($1) AND con.conparentid = 0
          ORDER BY con.confkey = (SELECT p.conkey FROM pg_constraint p
                                   WHERE p.conrelid = con.confrelid AND p.contype = 'p') DESC NULLS LAST,
                   con.conname",
        names("con"),
        names("conf")
    );
    let rows = sqlx::query(&sql)
        .bind(target.quoted())
        .fetch_all(&mut *connection)
        .await
        .with_context(|| format!("cannot read the foreign keys that reference table {target}"))?;
    rows.iter()
        .map(|row| {
            Ok(ReferencingKey {
                constraint: row.try_get(0)?,
                table: row.try_get(1)?,
                is_self_reference: row.try_get(2)?,
                columns: row.try_get(3)?,
                key: row.try_get(4)?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .with_context(|| format!("cannot read the foreign keys that reference table {target}"))
}

/// Fails, naming the constraint and the first missing key, when a row referencing the
/// target holds a key value that none of the new rows has.
async fn check_references_kept(
    connection: &mut PgConnection,
    staging: &TableName,
    target: &TableName,
    reference: &ReferencingKey,
) -> anyhow::Result<()> {
    let referencing_table = if reference.is_self_reference {
        staging.quoted()
    } else {
        reference.table.clone()
    };
    let not_null: Vec<String> = reference
        .columns
        .iter()
        .map(|column| format!("c.{} IS NOT NULL", quote_ident(column)))
        .collect();
    let matches: Vec<String> = reference
        .columns
        .iter()
        .zip(&reference.key)
        .map(|(column, key)| format!("s.{} = c.{}", quote_ident(key), quote_ident(column)))
        .collect();
    let values: Vec<String> = reference
        .columns
        .iter()
        .map(|column| format!("c.{}::text", quote_ident(column)))
        .collect();
    let sql = format!(
        "SELECT ARRAY[{}] FROM {referencing_table} c
          WHERE {} AND NOT EXISTS (SELECT 1 FROM {} s WHERE {})
          LIMIT 1",
        values.join(", "),
        not_null.join(" AND "),
        staging.quoted(),
        matches.join(" AND ")
    );
    let missing: Option<Vec<String>> = sqlx::query_scalar(&sql)
        .fetch_optional(connection)
        .await
        .with_context(|| {
            format!(
                "cannot check foreign key {:?} of table {} against the new rows",
                reference.constraint, reference.table
            )
        })?;
    if let Some(missing) = missing {
        let referencing = if reference.is_self_reference {
            "a row of the file".to_string()
        } else {
            format!("table {}", reference.table)
        };
        bail!(
            "cannot replace table {target}: foreign key {:?} of {referencing} references ({}) = ({}), which the file does not have; the table is unchanged (keep that key in the file, or delete the rows that reference it first)",
            reference.constraint,
            reference.key.join(", "),
            missing.join(", ")
        );
    }
    Ok(())
}

/// Whether the target carries something a rename would lose or break: grants, triggers,
/// row security, rules, foreign keys (either way), views, inheritance or partitions, a
/// publication, or another owner.
const IDENTITY_MATTERS_SQL: &str = "
    SELECT c.relacl IS NOT NULL
        OR c.relrowsecurity
        OR EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = c.oid AND NOT tgisinternal)
        OR EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = c.oid AND contype = 'f')
        OR c.relhasrules
        OR c.relkind <> 'r'
        OR c.relispartition
        OR c.relowner <> (SELECT oid FROM pg_roles WHERE rolname = current_user)
        OR EXISTS (SELECT 1 FROM pg_inherits WHERE inhrelid = c.oid OR inhparent = c.oid)
        OR EXISTS (SELECT 1 FROM pg_constraint WHERE confrelid = c.oid)
        OR EXISTS (SELECT 1 FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid
                    WHERE d.refobjid = c.oid AND d.classid = 'pg_rewrite'::regclass)
        OR EXISTS (SELECT 1 FROM pg_publication_rel WHERE prrelid = c.oid)
      FROM pg_class c
     WHERE c.oid = to_regclass($1)";

/// Publishes an atomic append or upsert: one INSERT ... SELECT of the sheet's columns from
/// the staging table into the target, with `conflict` (`ON CONFLICT ...`) for upsert, then
/// drops the staging table, in one transaction. Returns the rows written.
pub async fn publish(
    pool: &PgPool,
    staging: &TableName,
    target: &TableName,
    columns: &[Column],
    conflict: Option<&str>,
    fence: Option<&ChunkLedger>,
) -> anyhow::Result<u64> {
    let column_list: Vec<String> = columns
        .iter()
        .map(|column| quote_ident(&column.name))
        .collect();
    let column_list = column_list.join(", ");
    let insert = format!(
        "INSERT INTO {} ({column_list}) SELECT {column_list} FROM {} {}",
        target.quoted(),
        staging.quoted(),
        conflict.unwrap_or_default()
    );
    let mut connection = pool
        .acquire()
        .await
        .context("cannot get a connection to publish")?;
    let mut transaction = connection.begin().await?;
    sqlx::query("SET LOCAL synchronous_commit TO on")
        .execute(&mut *transaction)
        .await?;
    check_fence(&mut transaction, fence, target).await?;
    let written = sqlx::query(&insert)
        .execute(&mut *transaction)
        .await
        .with_context(|| {
            format!(
                "publishing the staged rows into table {target} failed; nothing was written to it"
            )
        })?
        .rows_affected();
    let drop = format!("DROP TABLE {}", staging.quoted());
    sqlx::query(&drop).execute(&mut *transaction).await?;
    transaction.commit().await?;
    Ok(written)
}

/// With `fence` (the run's chunk ledger), fails unless the run still holds the target's lock,
/// in the publishing transaction itself: a run that lost its lock never publishes.
async fn check_fence(
    connection: &mut sqlx::PgConnection,
    fence: Option<&ChunkLedger>,
    target: &TableName,
) -> anyhow::Result<()> {
    let Some(fence) = fence else {
        return Ok(());
    };
    chunks::check_fence(connection, &fence.ledger, fence.run_id, fence.fence)
        .await
        .with_context(|| format!("cannot publish the staged rows into table {target}"))
}

/// Drops a staging table left by a run that did not publish.
pub async fn discard(pool: &PgPool, staging: &TableName) -> anyhow::Result<()> {
    let sql = format!("DROP TABLE IF EXISTS {}", staging.quoted());
    execute(pool, &sql, || {
        format!("cannot drop staging table {staging}")
    })
    .await?;
    Ok(())
}

/// The non-unique, non-constraint indexes of a table, with their definitions.
async fn secondary_indexes(
    pool: &PgPool,
    table: &TableName,
) -> anyhow::Result<Vec<SecondaryIndex>> {
    let rows = sqlx::query(
        "SELECT c.relname::text AS name, pg_get_indexdef(i.indexrelid) AS definition
           FROM pg_index i
           JOIN pg_class c ON c.oid = i.indexrelid
          WHERE i.indrelid = to_regclass($1) AND NOT i.indisunique AND NOT i.indisprimary
            AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid)
          ORDER BY c.relname",
    )
    .bind(table.quoted())
    .fetch_all(pool)
    .await
    .with_context(|| format!("cannot read the indexes of table {table}"))?;
    rows.iter()
        .map(|row| {
            let name: String = row.try_get("name")?;
            let definition: String = row.try_get("definition")?;
            let (_, using) = definition
                .split_once(" USING ")
                .with_context(|| format!("unexpected definition of index {name}: {definition}"))?;
            Ok(SecondaryIndex {
                name,
                definition: using.to_string(),
            })
        })
        .collect()
}

/// Pairs each index of `staging` with the index of `target` that has the same definition
/// (method, columns, predicate, uniqueness): (staging name, target name).
async fn index_renames(
    connection: &mut sqlx::PgConnection,
    staging: &TableName,
    target: &TableName,
) -> anyhow::Result<Vec<(String, String)>> {
    let definitions = "SELECT c.relname::text, i.indisunique, split_part(pg_get_indexdef(i.indexrelid), ' USING ', 2)
                         FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
                        WHERE i.indrelid = to_regclass($1) ORDER BY c.relname";
    let mut target_indexes: Vec<(String, bool, String)> = sqlx::query_as(definitions)
        .bind(target.quoted())
        .fetch_all(&mut *connection)
        .await
        .with_context(|| format!("cannot read the indexes of table {target}"))?;
    let staging_indexes: Vec<(String, bool, String)> = sqlx::query_as(definitions)
        .bind(staging.quoted())
        .fetch_all(&mut *connection)
        .await
        .with_context(|| format!("cannot read the indexes of staging table {staging}"))?;
    let mut renames = Vec::new();
    for (staging_name, unique, definition) in staging_indexes {
        let twin = target_indexes
            .iter()
            .position(|(_, target_unique, target_definition)| {
                *target_unique == unique && *target_definition == definition
            });
        if let Some(position) = twin {
            let (target_name, _, _) = target_indexes.swap_remove(position);
            renames.push((staging_name, target_name));
        }
    }
    Ok(renames)
}

/// The temporary name of the staging table's `position`-th rebuilt index.
fn staging_index_name(staging: &TableName, position: usize) -> String {
    format!("{}_index_{position}", staging.name)
}

fn qualified(schema: Option<&str>, name: &str) -> String {
    match schema {
        Some(schema) => format!("{}.{}", quote_ident(schema), quote_ident(name)),
        None => quote_ident(name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_table_names_differ_per_run_and_leave_room_for_index_names() {
        let first = run_table_name("importer_staging");
        let second = run_table_name("importer_staging");
        assert_ne!(first, second);
        assert!(first.starts_with(&format!("importer_staging_{}_", std::process::id())));
        let staging = TableName {
            schema: None,
            name: format!("{}_{}", run_table_name("importer_retired"), u32::MAX),
        };
        assert!(staging_index_name(&staging, 999).len() <= 63, "{staging}");
    }
}
