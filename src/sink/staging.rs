//! Staging tables for `--mode replace`, `--mode upsert --atomic` and `--atomic`: the rows go
//! into a table of the target's shape that no reader looks at, and reach the target in one
//! transaction at the end (a swap for replace, an INSERT ... SELECT otherwise).
//!
//! SQL only; `cmd::mode` decides when each step runs. Names come from the catalog or from
//! `TableName`, and pass through `quote_ident`.

use anyhow::Context;
use sqlx::{Connection, PgPool, Row};
use tracing::info;

use crate::schema::Column;
use crate::sink::{TableName, chunks, create_table_like, execute, quote_ident};

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

/// Builds the target's secondary indexes on the loaded staging table.
pub async fn build_indexes(
    pool: &PgPool,
    staging: &TableName,
    indexes: &[SecondaryIndex],
) -> anyhow::Result<()> {
    for (position, index) in indexes.iter().enumerate() {
        let sql = format!(
            "CREATE INDEX {} ON {} USING {}",
            quote_ident(&staging_index_name(staging, position)),
            staging.quoted(),
            index.definition
        );
        execute(pool, &sql, || {
            format!(
                "cannot build index {} on staging table {staging}",
                index.name
            )
        })
        .await?;
    }
    // a fresh table has no planner statistics: gather them before readers see it
    let analyze = format!("ANALYZE {}", staging.quoted());
    execute(pool, &analyze, || {
        format!("cannot analyze staging table {staging}")
    })
    .await?;
    Ok(())
}

/// Puts the staging rows in the target's place in one transaction, so readers see the old
/// rows until the commit and the new ones after it, never an empty table. The staging table
/// is renamed over the target when nothing hangs on the target's identity; otherwise the
/// target is emptied and refilled.
pub async fn swap_in(
    pool: &PgPool,
    staging: &TableName,
    target: &TableName,
    fence: Option<i64>,
) -> anyhow::Result<Published> {
    let mut connection = pool
        .acquire()
        .await
        .context("cannot get a connection to publish")?;
    let mut transaction = connection.begin().await?;
    // the sessions commit asynchronously (see sink::connect); this commit is the one that
    // publishes, so it waits for its flush
    sqlx::query("SET LOCAL synchronous_commit TO on")
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
        let columns: Vec<String> = sqlx::query_scalar(
            "SELECT quote_ident(attname) FROM pg_attribute
              WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped
                AND attgenerated = ''
              ORDER BY attnum",
        )
        .bind(target.quoted())
        .fetch_all(&mut *transaction)
        .await
        .with_context(|| format!("cannot read the columns of table {target}"))?;
        let column_list = columns.join(", ");
        let refill = format!(
            "TRUNCATE {target_sql}; INSERT INTO {target_sql} ({column_list}) OVERRIDING SYSTEM VALUE SELECT {column_list} FROM {staging_sql}; DROP TABLE {staging_sql}",
            target_sql = target.quoted(),
            staging_sql = staging.quoted(),
        );
        sqlx::raw_sql(&refill)
            .execute(&mut *transaction)
            .await
            .with_context(|| format!("cannot refill table {target} from the staging table"))?;
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
        name: format!("importer_retired_{}", std::process::id()),
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
    fence: Option<i64>,
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

/// With `fence` (the run's ledger id), fails unless the run still holds the target's lock,
/// in the publishing transaction itself: a run that lost its lock never publishes.
async fn check_fence(
    connection: &mut sqlx::PgConnection,
    fence: Option<i64>,
    target: &TableName,
) -> anyhow::Result<()> {
    let Some(run_id) = fence else {
        return Ok(());
    };
    chunks::check_fence(connection, run_id)
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
