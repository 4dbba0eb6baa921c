//! The run ledger: the table `runs` of the schema `importer` (or `--ledger-schema`), one row per `importer run` that got
//! as far as holding its table's lock. The row is inserted as `running` when the import starts
//! and updated with its outcome, stats and error when it ends, so that `--skip-unchanged` can
//! tell whether a file's content is already in a table, and `importer history` can list runs.
//!
//! A file is known by its bytes ([`fingerprint`]: SHA-256 and size), not by its name or
//! mtime: cron jobs re-download the same export under the same name every night. The ledger is
//! created on first use ([`create_ledger`]): every object of it, the chunk ledger's included,
//! in one transaction under one advisory lock, because `CREATE ... IF NOT EXISTS` alone is
//! not safe against a concurrent create, and DDL beside a run that uses the ledger could
//! deadlock with it. This module owns the ledger's SQL;
//! `import::record` decides what to record, `cmd::history` how to show it.

use std::io::Read;
use std::path::Path;

use anyhow::Context;
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::{Executor, PgPool, Row};
use tracing::info;

use super::chunks;
use super::lock::advisory_key;
use super::{TableName, quote_ident};
use crate::stats::ImportStats;

/// The ledger's table, in the schema the user picks (`--ledger-schema`).
const LEDGER_TABLE_NAME: &str = "runs";

/// The run ledger's schema when none is given.
pub const DEFAULT_LEDGER_SCHEMA: &str = "importer";

/// Where the run ledger lives: the table `runs` of a schema (`importer` unless
/// `--ledger-schema` or `IMPORTER_LEDGER_SCHEMA` says otherwise).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ledger {
    schema: String,
}

impl Ledger {
    /// The ledger in `schema`.
    pub fn new(schema: impl Into<String>) -> Self {
        Ledger {
            schema: schema.into(),
        }
    }

    /// The ledger's table, schema-qualified.
    pub fn table(&self) -> TableName {
        TableName {
            schema: Some(self.schema.clone()),
            name: LEDGER_TABLE_NAME.to_string(),
        }
    }

    /// `sql` written for the default schema (`importer.` before every ledger object) with
    /// this ledger's quoted schema instead: the chunk ledger's objects live beside `runs`.
    pub(crate) fn qualify(&self, sql: &str) -> String {
        sql.replace("importer.", &format!("{}.", quote_ident(&self.schema)))
    }

    /// The advisory key that serialises the creation of this ledger's objects.
    pub(crate) fn creation_key(&self) -> i64 {
        // per schema: ledgers in two schemas are created independently
        advisory_key(&format!("importer ledger {}", quote_ident(&self.schema)))
    }

    /// The quoted, qualified name for SQL.
    fn quoted(&self) -> String {
        self.table().quoted()
    }

    /// The ledger's schema and table. Outcomes are not constrained by a CHECK so that a later
    /// version can add one without a migration; [`RunOutcome`] lists them.
    fn create_sql(&self) -> String {
        let schema = quote_ident(&self.schema);
        let table = self.quoted();
        format!(
            "
CREATE SCHEMA IF NOT EXISTS {schema};
CREATE TABLE IF NOT EXISTS {table} (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    file_path       text NOT NULL,
    file_size       bigint NOT NULL,
    sha256          text NOT NULL,
    sheet           text NOT NULL,
    table_schema    text NOT NULL,
    table_name      text NOT NULL,
    method          text NOT NULL,
    mode            text NOT NULL,
    started_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at     timestamptz,
    stats           jsonb,
    outcome         text NOT NULL,
    error           text,
    previous_run_id bigint
);
CREATE INDEX IF NOT EXISTS runs_table_sha256_idx
    ON {table} (table_schema, table_name, sha256);
COMMENT ON TABLE {table} IS
    'importer run ledger: one row per run (outcome running, succeeded, rejected_rows, failed, cancelled or skipped)';
COMMENT ON COLUMN {table}.stats IS 'the run''s ImportStats, as --format json prints them';
COMMENT ON COLUMN {table}.previous_run_id IS 'skipped runs: the run that loaded the same content';
"
        )
    }
}

impl std::fmt::Display for Ledger {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "{}", self.table())
    }
}

/// Bytes read at a time while hashing.
const HASH_BUFFER_BYTES: usize = 1 << 16;

/// How a run ended, as the ledger's `outcome` column spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunOutcome {
    /// Started and not finished yet (or the process died without a word).
    Running,
    /// Every row is in (exit 0).
    Succeeded,
    /// Finished, some rows rejected (exit 3).
    RejectedRows,
    /// A fatal error after the start, --max-errors included (exit 1).
    Failed,
    /// Stopped by Ctrl-C or SIGTERM (exit 130 / 143).
    Cancelled,
    /// `--skip-unchanged` found the content already loaded; nothing was done.
    Skipped,
    /// Found `running` by a later run on the same table while its process was gone (killed,
    /// or cut off from the server for good): it never recorded how it ended.
    Died,
}

impl RunOutcome {
    /// The outcome's name in the ledger.
    pub fn name(self) -> &'static str {
        match self {
            RunOutcome::Running => "running",
            RunOutcome::Succeeded => "succeeded",
            RunOutcome::RejectedRows => "rejected_rows",
            RunOutcome::Failed => "failed",
            RunOutcome::Cancelled => "cancelled",
            RunOutcome::Skipped => "skipped",
            RunOutcome::Died => "died",
        }
    }
}

/// A file as the ledger knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileFingerprint {
    /// The absolute path.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256 of the bytes, lowercase hex.
    pub sha256: String,
}

/// Hashes `path` off the async runtime (a large workbook takes a moment).
pub async fn fingerprint(path: &Path) -> anyhow::Result<FileFingerprint> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || fingerprint_blocking(&path))
        .await
        .context("the file hasher panicked")?
}

fn fingerprint_blocking(path: &Path) -> anyhow::Result<FileFingerprint> {
    let cannot_read = || format!("cannot read {} to hash it", path.display());
    let mut file = std::fs::File::open(path).with_context(cannot_read)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; HASH_BUFFER_BYTES];
    let mut size: u64 = 0;
    loop {
        let read = file.read(&mut buffer).with_context(cannot_read)?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
        size += read as u64;
    }
    let absolute = std::path::absolute(path)
        .with_context(|| format!("cannot make {} an absolute path", path.display()))?;
    Ok(FileFingerprint {
        path: absolute.display().to_string(),
        size,
        sha256: format!("{:x}", hasher.finalize()),
    })
}

/// What the ledger records when a run starts.
#[derive(Debug, Clone)]
pub struct RunStart<'a> {
    /// The file read.
    pub file: &'a FileFingerprint,
    /// The sheet read (for CSV: the file name).
    pub sheet: &'a str,
    /// The target table, schema-qualified.
    pub table: &'a TableName,
    /// `--method`, by its contract name.
    pub method: &'a str,
    /// `--mode`, by its name.
    pub mode: &'a str,
}

/// An earlier run that loaded the same content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreviousLoad {
    /// Its ledger id.
    pub run_id: i64,
    /// When it finished, as text in the server's time zone.
    pub finished_at: String,
}

/// Whether the ledger exists (without creating it).
pub async fn ledger_exists(pool: &PgPool, ledger: &Ledger) -> anyhow::Result<bool> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(ledger.quoted())
        .fetch_one(pool)
        .await
        .with_context(|| format!("cannot look up the run ledger {ledger}"))?;
    Ok(exists)
}

/// The ledger's tables in the order in which the run's own transactions lock them: a write
/// records its chunk, then reads the token (and on a lost fence reads `runs`); taking the
/// fence bumps the token, then updates `runs`; a resume reads the chunks, then `runs`. An
/// upgrade locks every one that exists, in this order, before it alters any: it then waits
/// for those transactions without ever holding a lock one of them waits for while it waits
/// for one of theirs, so neither can deadlock. A new query that takes two of them must take
/// them in this order too.
const TABLES_IN_LOCK_ORDER: [&str; 3] =
    ["importer.chunks", "importer.table_locks", "importer.runs"];

/// Creates the ledger's objects, or upgrades those an earlier version created: the schema,
/// `runs`, and the chunk ledger (`chunks`, `table_locks` and the functions the writers call,
/// see `sink::chunks`). The whole set-up is one transaction under one advisory lock taken
/// before any of it, and checks the version again once it holds the lock: of two first runs
/// at once, the second waits for the first and then finds nothing to do, so no DDL ever
/// runs beside a run that already uses the ledger. A ledger of this version costs one
/// catalog lookup, and needs no CREATE privilege.
pub async fn create_ledger(pool: &PgPool, ledger: &Ledger) -> anyhow::Result<()> {
    let is_current = chunks::chunk_ledger_is_current(pool, ledger)
        .await
        .with_context(|| format!("cannot look up the run ledger {ledger}"))?;
    if is_current {
        return Ok(());
    }
    let cannot_create = || {
        format!(
            "cannot create the run ledger {ledger}; a user with CREATE on the database can create it by running importer once"
        )
    };
    let mut transaction = pool.begin().await.with_context(cannot_create)?;
    // `IF NOT EXISTS` and `IF EXISTS` report each object they skip as a NOTICE: noise on
    // the stderr of a run that did nothing wrong
    sqlx::query("SET LOCAL client_min_messages TO warning")
        .execute(&mut *transaction)
        .await
        .with_context(cannot_create)?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(ledger.creation_key())
        .execute(&mut *transaction)
        .await
        .with_context(cannot_create)?;
    // set up by another run while this one waited for the lock
    if chunks::chunk_ledger_is_current(&mut *transaction, ledger)
        .await
        .with_context(cannot_create)?
    {
        transaction.commit().await.with_context(cannot_create)?;
        return Ok(());
    }
    let tables: Vec<String> = TABLES_IN_LOCK_ORDER
        .iter()
        .map(|table| ledger.qualify(table))
        .collect();
    let existing: Option<String> = sqlx::query_scalar(
        "SELECT string_agg(relation::text, ', ' ORDER BY position)
           FROM unnest($1::text[]) WITH ORDINALITY AS t(name, position),
                LATERAL to_regclass(name) AS relation
          WHERE relation IS NOT NULL",
    )
    .bind(&tables)
    .fetch_one(&mut *transaction)
    .await
    .with_context(cannot_create)?;
    if let Some(existing) = existing {
        // the relations' own names, as the server quotes them
        sqlx::query(&format!("LOCK TABLE {existing} IN ACCESS EXCLUSIVE MODE"))
            .execute(&mut *transaction)
            .await
            .with_context(cannot_create)?;
    }
    let create_sql = format!(
        "{}\n{}",
        ledger.create_sql(),
        chunks::chunk_ledger_sql(ledger)
    );
    // through `Executor`: `RawSql::execute` on a transaction leaves the import's future
    // not provably `Send`, so a service could not spawn it
    (&mut *transaction)
        .execute(sqlx::raw_sql(&create_sql))
        .await
        .with_context(cannot_create)?;
    transaction.commit().await.with_context(cannot_create)?;
    info!(ledger = %ledger, "run ledger ready");
    Ok(())
}

/// The latest run that loaded this content into this table (outcome succeeded or
/// rejected_rows).
pub async fn previous_load(
    pool: &PgPool,
    ledger: &Ledger,
    table: &TableName,
    sha256: &str,
) -> anyhow::Result<Option<PreviousLoad>> {
    let sql = format!(
        "SELECT id, to_char(coalesce(finished_at, started_at), 'YYYY-MM-DD HH24:MI:SS TZ')
           FROM {}
          WHERE table_schema = $1 AND table_name = $2 AND sha256 = $3
            AND outcome IN ('succeeded', 'rejected_rows')
          ORDER BY id DESC
          LIMIT 1",
        ledger.quoted()
    );
    let previous: Option<(i64, String)> = sqlx::query_as(&sql)
        .bind(table.schema.as_deref())
        .bind(&table.name)
        .bind(sha256)
        .fetch_optional(pool)
        .await
        .with_context(|| format!("cannot read the run ledger {ledger} for table {table}"))?;
    Ok(previous.map(|(run_id, finished_at)| PreviousLoad {
        run_id,
        finished_at,
    }))
}

/// Records a run and returns its id: `Running` for one that starts, or an outcome already
/// reached (`Skipped`, with the run that loaded the content), which also sets `finished_at`.
pub async fn insert_run(
    pool: &PgPool,
    ledger: &Ledger,
    start: &RunStart<'_>,
    outcome: RunOutcome,
    previous_run_id: Option<i64>,
) -> anyhow::Result<i64> {
    let sql = format!(
        "INSERT INTO {}
                (file_path, file_size, sha256, sheet, table_schema, table_name, method, mode,
                 outcome, previous_run_id, finished_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10,
                 CASE WHEN $9 <> 'running' THEN clock_timestamp() END)
         RETURNING id",
        ledger.quoted()
    );
    let id: i64 = sqlx::query_scalar(&sql)
        .bind(&start.file.path)
        .bind(i64::try_from(start.file.size).context("the file is larger than 2^63 bytes")?)
        .bind(&start.file.sha256)
        .bind(start.sheet)
        .bind(start.table.schema.as_deref())
        .bind(&start.table.name)
        .bind(start.method)
        .bind(start.mode)
        .bind(outcome.name())
        .bind(previous_run_id)
        .fetch_one(pool)
        .await
        .with_context(|| format!("cannot record the run in the run ledger {ledger}"))?;
    Ok(id)
}

/// Records how run `run_id` ended: its outcome, its stats (when they were printed) and the
/// error that stopped it.
pub async fn finish_run(
    pool: &PgPool,
    ledger: &Ledger,
    run_id: i64,
    outcome: RunOutcome,
    stats: Option<&ImportStats>,
    error: Option<&str>,
) -> anyhow::Result<()> {
    let stats = stats.map(serde_json::to_string).transpose()?;
    let sql = format!(
        "UPDATE {}
            SET finished_at = clock_timestamp(), outcome = $2, stats = $3::text::jsonb, error = $4
          WHERE id = $1",
        ledger.quoted()
    );
    sqlx::query(&sql)
        .bind(run_id)
        .bind(outcome.name())
        .bind(stats)
        .bind(error)
        .execute(pool)
        .await
        .with_context(|| {
            format!("cannot record the end of run {run_id} in the run ledger {ledger}")
        })?;
    Ok(())
}

/// One run as `importer history` shows it (`--format json`: these field names).
#[derive(Debug, Clone, Serialize)]
pub struct RunEntry {
    pub id: i64,
    pub file_path: String,
    pub file_size: i64,
    pub sha256: String,
    pub sheet: String,
    /// Schema-qualified.
    pub table: String,
    /// The same table as its schema and name apart (a schema's name may hold a dot).
    #[serde(skip)]
    pub schema_and_name: (String, String),
    pub method: String,
    pub mode: String,
    /// ISO 8601 with the offset.
    pub started_at: String,
    pub finished_at: Option<String>,
    /// From start to finish; `None` while running.
    pub duration_seconds: Option<f64>,
    pub outcome: String,
    pub error: Option<String>,
    /// The ImportStats object, when the run got as far as printing them.
    pub stats: Option<serde_json::Value>,
    pub previous_run_id: Option<i64>,
}

/// The columns of a [`RunEntry`], as [`run_entry`] reads them.
const RUN_ENTRY_COLUMNS: &str =
    "id, file_path, file_size, sha256, sheet, table_schema, table_name, method, mode,
        to_json(started_at) #>> '{}' AS started_at,
        to_json(finished_at) #>> '{}' AS finished_at,
        extract(epoch FROM finished_at - started_at)::float8 AS duration_seconds,
        outcome, error, stats::text AS stats, previous_run_id";

/// The latest `limit` runs, newest first, optionally only those into `table` (schema-
/// qualified). Without a ledger there are no runs: the ledger is not created here.
pub async fn list_runs(
    pool: &PgPool,
    ledger: &Ledger,
    table: Option<&TableName>,
    limit: u32,
) -> anyhow::Result<Vec<RunEntry>> {
    if !ledger_exists(pool, ledger).await? {
        return Ok(Vec::new());
    }
    let sql = format!(
        "SELECT {RUN_ENTRY_COLUMNS}
           FROM {}
          WHERE ($1::text IS NULL OR (table_schema = $1 AND table_name = $2))
          ORDER BY id DESC
          LIMIT $3",
        ledger.quoted()
    );
    let rows = sqlx::query(&sql)
        .bind(table.and_then(|table| table.schema.as_deref()))
        .bind(table.map(|table| table.name.as_str()))
        .bind(i64::from(limit))
        .fetch_all(pool)
        .await
        .with_context(|| format!("cannot read the run ledger {ledger}"))?;
    rows.iter()
        .map(|row| run_entry(row, ledger))
        .collect::<anyhow::Result<Vec<_>>>()
}

/// Run `id`, if the ledger has it (no ledger: no run).
pub async fn get_run(pool: &PgPool, ledger: &Ledger, id: i64) -> anyhow::Result<Option<RunEntry>> {
    if !ledger_exists(pool, ledger).await? {
        return Ok(None);
    }
    let sql = format!(
        "SELECT {RUN_ENTRY_COLUMNS} FROM {} WHERE id = $1",
        ledger.quoted()
    );
    let row = sqlx::query(&sql)
        .bind(id)
        .fetch_optional(pool)
        .await
        .with_context(|| format!("cannot read run {id} of the run ledger {ledger}"))?;
    row.map(|row| run_entry(&row, ledger)).transpose()
}

/// One row of [`RUN_ENTRY_COLUMNS`] as a [`RunEntry`].
fn run_entry(row: &sqlx::postgres::PgRow, ledger: &Ledger) -> anyhow::Result<RunEntry> {
    let read = || -> anyhow::Result<RunEntry> {
        let id: i64 = row.try_get("id")?;
        let stats: Option<String> = row.try_get("stats")?;
        let stats = stats
            .map(|text| serde_json::from_str(&text))
            .transpose()
            .with_context(|| format!("run {id} of {ledger} holds invalid stats"))?;
        let table_schema: String = row.try_get("table_schema")?;
        let table_name: String = row.try_get("table_name")?;
        Ok(RunEntry {
            id,
            file_path: row.try_get("file_path")?,
            file_size: row.try_get("file_size")?,
            sha256: row.try_get("sha256")?,
            sheet: row.try_get("sheet")?,
            table: format!("{table_schema}.{table_name}"),
            schema_and_name: (table_schema.clone(), table_name.clone()),
            method: row.try_get("method")?,
            mode: row.try_get("mode")?,
            started_at: row.try_get("started_at")?,
            finished_at: row.try_get("finished_at")?,
            duration_seconds: row.try_get("duration_seconds")?,
            outcome: row.try_get("outcome")?,
            error: row.try_get("error")?,
            stats,
            previous_run_id: row.try_get("previous_run_id")?,
        })
    };
    read().with_context(|| format!("cannot read the run ledger {ledger}"))
}
