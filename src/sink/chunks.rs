//! The chunk ledger: the table `importer.chunks`, one row per committed unit of a run (a COPY
//! chunk, an INSERT batch, a single row), written by the same transaction as the rows
//! themselves. A chunk row exists exactly when its data does: after a crash that lost the
//! last asynchronous commits, both are gone together. So the ledger's sum for a run is the
//! number of rows that run put in the table, and that sum, not the writers' own tally, is
//! what the stats report.
//!
//! Writers call `importer.record_chunk(run_id, first_row, last_row, row_count, <fence>)` inside their
//! transaction (in a CTE of the INSERT, or after the COPY before COMMIT); this module owns
//! that function and the queries that read the ledger back. The strategies decide when.

use std::time::{Duration, Instant};

use anyhow::Context;
use sqlx::{Connection, PgConnection, PgPool};
use tracing::warn;

use super::TableName;
use super::ledger::{Ledger, RunOutcome};
use crate::pipeline::ConvertedRow;

/// The chunk ledger's name, for messages.
pub const CHUNKS_TABLE: &str = "importer.chunks";

/// The function every write transaction calls, by its SQL signature (run, first row, last
/// row, row count, then the run's fence: token, lock key, lock backend pid and start).
const RECORD_CHUNK_SIGNATURE: &str =
    "importer.record_chunk(bigint,bigint,bigint,bigint,bigint,bigint,integer,bigint)";

/// How long the end of a run tries the pool before it opens a connection of its own.
const POOL_ATTEMPT_TIME: Duration = Duration::from_secs(2);

/// The chunk ledger's DDL; `importer.runs` (see `ledger`) exists before it. No foreign key
/// to the runs: its check would lock the run's row in every write transaction.
///
/// The fence: `importer.table_locks` holds one token per table, bumped by each run that takes
/// the table's advisory lock, and the run keeps its token and its lock connection's backend
/// (in its `importer.runs` row, and in memory: the writers pass them to `record_chunk`).
/// Every write transaction takes the table's fence key (the lock key's two halves as an
/// advisory key of the two-integer form, a lock space apart from the run locks) SHARED
/// until its commit; a new holder takes it EXCLUSIVE to bump the token, so the bump waits for
/// the old run's writes in flight. `record_chunk` then refuses (SQLSTATE [`FENCED`]) when the
/// token has moved on or the lock backend is gone, so every later write of the old run
/// fails: two runs never write the same table at once. The fence key is an in-memory lock:
/// unlike a row lock on the token, it costs no WAL and no MultiXact.
///
/// "The lock backend is gone" stands for "nobody holds the table's run lock": a
/// session-level advisory lock is lost only with its session, or by an explicit unlock,
/// which only `TableLock::release` does, once the writers are done. The writer asks the lock
/// manager with `pg_try_advisory_xact_lock_shared` of the run lock key, which fails at once
/// while the lock is held (exclusively, by the run's lock backend) and costs a lookup in one
/// lock-table partition. Looking the backend up by pid (`pg_stat_get_activity`, which copies
/// every backend's status) or in `pg_locks` (which takes every partition) cost more than the
/// rest of a one-row commit. Held by someone and the token still ours means held by our lock
/// backend: another run can take the lock only once ours is gone, and until that run has
/// bumped the token (which waits, on the fence key, for our writes in flight) it reads
/// nothing of the table; from the bump on the token check refuses.
///
/// `record_chunk` checks the fence and records the chunk in one statement after the fence
/// key (one statement less per commit: it is what a one-row commit pays on every row). It
/// keeps the lock pid and start among its arguments, so that writers of every version call
/// the same function.
///
/// Run once per database version (see [`CHUNK_LEDGER_VERSION`]), by `ledger::create_ledger`
/// under its set-up lock, with the ledger's tables locked in the order the runs' own
/// transactions lock them: the functions of earlier ledgers (the run read from
/// `importer.runs`, the token read `FOR SHARE`, the lock backend looked up by pid) are
/// replaced here.
const CREATE_CHUNK_LEDGER: &str = "
ALTER TABLE importer.runs
    ADD COLUMN IF NOT EXISTS lock_token bigint,
    ADD COLUMN IF NOT EXISTS lock_key bigint,
    ADD COLUMN IF NOT EXISTS lock_pid integer,
    ADD COLUMN IF NOT EXISTS lock_backend_start timestamptz,
    ADD COLUMN IF NOT EXISTS staging_schema text,
    ADD COLUMN IF NOT EXISTS staging_name text;
COMMENT ON COLUMN importer.runs.staging_name IS
    'the staging table of an --atomic or --mode replace run, dropped by the next run on the table if this one died';
COMMENT ON COLUMN importer.runs.lock_pid IS
    'backend pid of the session holding the run''s table lock (with lock_backend_start: tells a live run from a dead one)';
CREATE TABLE IF NOT EXISTS importer.table_locks (
    table_schema text NOT NULL,
    table_name   text NOT NULL,
    token        bigint NOT NULL,
    PRIMARY KEY (table_schema, table_name)
);
COMMENT ON TABLE importer.table_locks IS
    'importer fencing tokens: bumped by every run that takes a table''s lock; writes of a run whose token is not the current one fail';
ALTER TABLE importer.table_locks ADD COLUMN IF NOT EXISTS lock_key bigint;
COMMENT ON COLUMN importer.table_locks.lock_key IS
    'the table''s run lock key, by which writers find the token';
CREATE INDEX IF NOT EXISTS table_locks_lock_key_idx ON importer.table_locks (lock_key);
CREATE TABLE IF NOT EXISTS importer.chunks (
    run_id       bigint NOT NULL,
    first_row    bigint NOT NULL,
    last_row     bigint NOT NULL,
    row_count    bigint NOT NULL,
    committed_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX IF NOT EXISTS chunks_run_id_idx ON importer.chunks (run_id, first_row);
COMMENT ON TABLE importer.chunks IS
    'importer chunk ledger: one row per committed unit of a run, written in the same transaction as its rows';
COMMENT ON COLUMN importer.chunks.first_row IS
    '1-based sheet row number of the unit''s first row; rows between first_row and last_row that are not in the unit were rejected';
DROP FUNCTION IF EXISTS importer.record_chunk(bigint, bigint, bigint, bigint);
DROP FUNCTION IF EXISTS importer.check_fence(bigint);
CREATE OR REPLACE FUNCTION importer.fence_lost(p_run_id bigint)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    -- the run's row is read only here, on the way out
    RAISE EXCEPTION 'run % no longer holds the run lock of table % (its lock connection was closed or terminated, or another run took the table); it stopped before committing more rows',
        p_run_id,
        (SELECT format('%s.%s', table_schema, table_name) FROM importer.runs WHERE id = p_run_id)
        USING ERRCODE = 'IMP01';
END
$$;
CREATE OR REPLACE FUNCTION importer.check_fence(
    p_run_id bigint, p_lock_token bigint, p_lock_key bigint, p_lock_pid integer,
    p_lock_backend_start bigint)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    -- the fence key, shared until the commit: a new holder's bump waits for this transaction
    PERFORM pg_advisory_xact_lock_shared((p_lock_key >> 32)::integer, (p_lock_key << 32 >> 32)::integer);
    -- a statement of its own, so its snapshot is taken after the fence key: it sees any bump
    IF NOT EXISTS (
        SELECT 1 FROM importer.table_locks WHERE lock_key = p_lock_key AND token = p_lock_token)
       -- taken, the run lock was free: its holder is gone
       OR pg_try_advisory_xact_lock_shared(p_lock_key)
    THEN
        PERFORM importer.fence_lost(p_run_id);
    END IF;
END
$$;
CREATE OR REPLACE FUNCTION importer.record_chunk(
    p_run_id bigint, p_first_row bigint, p_last_row bigint, p_row_count bigint,
    p_lock_token bigint, p_lock_key bigint, p_lock_pid integer, p_lock_backend_start bigint)
RETURNS bigint LANGUAGE plpgsql AS $$
BEGIN
    -- as in check_fence: the fence key first, then a statement that sees any bump
    PERFORM pg_advisory_xact_lock_shared((p_lock_key >> 32)::integer, (p_lock_key << 32 >> 32)::integer);
    INSERT INTO importer.chunks (run_id, first_row, last_row, row_count)
    SELECT p_run_id, p_first_row, p_last_row, p_row_count
     WHERE EXISTS (
        SELECT 1 FROM importer.table_locks WHERE lock_key = p_lock_key AND token = p_lock_token)
       AND NOT pg_try_advisory_xact_lock_shared(p_lock_key);
    IF NOT FOUND THEN
        PERFORM importer.fence_lost(p_run_id);
    END IF;
    RETURN p_row_count;
END
$$;
COMMENT ON FUNCTION importer.record_chunk(bigint, bigint, bigint, bigint, bigint, bigint, integer, bigint) IS
    'importer chunk ledger VERSION: records a committed unit of a run, or fails (IMP01) once the run has lost its table';
";

/// The chunk ledger's version, kept in the comment of `record_chunk`: a database whose
/// functions are of an earlier version gets them replaced.
const CHUNK_LEDGER_VERSION: &str = "v3";

/// SQLSTATE of `record_chunk` when the run has lost its table's lock (outside the classes
/// of row errors, so the writers stop instead of rejecting rows).
pub const FENCED: &str = "IMP01";

/// A run's hold on its table as its writers prove it at each commit (see
/// [`take_fence`]): its fencing token, and the key and backend of its table lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fence {
    /// The table's token when the run took it.
    pub token: i64,
    /// The advisory key of the table's run lock.
    pub lock_key: i64,
    /// The pid of the backend holding that lock.
    pub lock_pid: i32,
    /// That backend's start, in microseconds since the Unix epoch: with the pid, names it.
    pub lock_backend_start: i64,
}

/// Fails (SQLSTATE [`FENCED`]) unless run `run_id` still holds its table's lock (`fence`);
/// called inside a transaction that writes the target, it holds a new holder off until the
/// commit.
pub async fn check_fence(
    connection: &mut PgConnection,
    ledger: &Ledger,
    run_id: i64,
    fence: Fence,
) -> Result<(), sqlx::Error> {
    sqlx::query(&ledger.qualify("SELECT importer.check_fence($1, $2, $3, $4, $5)"))
        .bind(run_id)
        .bind(fence.token)
        .bind(fence.lock_key)
        .bind(fence.lock_pid)
        .bind(fence.lock_backend_start)
        .execute(connection)
        .await?;
    Ok(())
}

/// Takes the fence of `table` for run `run_id`, whose lock is held by the backend
/// `lock_pid` with advisory key `lock_key`: takes the table's fence key exclusive (waiting
/// for writes of an earlier holder still in flight), bumps the table's token and keeps it,
/// with the lock backend, in the run's row. Called after the advisory lock is taken and
/// before anything is written; returns what the run's writers check. Its transaction locks
/// `table_locks`, then `runs`, the order in which a ledger upgrade locks them (see
/// `ledger::create_ledger`), and no set-up runs DDL beside it once the ledger is current, so
/// it never deadlocks with one.
pub async fn take_fence(
    pool: &PgPool,
    ledger: &Ledger,
    run_id: i64,
    table: &TableName,
    lock_key: i64,
    lock_pid: i32,
) -> anyhow::Result<Fence> {
    let cannot_take = || format!("cannot take the fencing token of table {table}");
    let schema = table.schema.as_deref().unwrap_or_default();
    let mut transaction = pool.begin().await.with_context(cannot_take)?;
    // the writers' fence key (see CREATE_CHUNK_LEDGER), released by the commit
    sqlx::query("SELECT pg_advisory_xact_lock(($1::bigint >> 32)::integer, ($1::bigint << 32 >> 32)::integer)")
        .bind(lock_key)
        .execute(&mut *transaction)
        .await
        .with_context(cannot_take)?;
    let (token, lock_backend_start): (i64, i64) = sqlx::query_as(&ledger.qualify(
        "WITH bumped AS (
             INSERT INTO importer.table_locks AS l (table_schema, table_name, token, lock_key)
             VALUES ($2, $3, 1, $4)
             ON CONFLICT (table_schema, table_name)
             DO UPDATE SET token = l.token + 1, lock_key = excluded.lock_key
             RETURNING token),
         backend AS (SELECT backend_start FROM pg_stat_activity WHERE pid = $5),
         recorded AS (
             UPDATE importer.runs
                SET lock_token = (SELECT token FROM bumped), lock_key = $4, lock_pid = $5,
                    lock_backend_start = (SELECT backend_start FROM backend)
              WHERE id = $1)
         SELECT token,
                coalesce((SELECT (extract(epoch FROM backend_start) * 1000000)::bigint FROM backend), 0)
           FROM bumped",
    ))
    .bind(run_id)
    .bind(schema)
    .bind(&table.name)
    .bind(lock_key)
    .bind(lock_pid)
    .fetch_one(&mut *transaction)
    .await
    .with_context(cannot_take)?;
    transaction.commit().await.with_context(cannot_take)?;
    Ok(Fence {
        token,
        lock_key,
        lock_pid,
        lock_backend_start,
    })
}

/// Keeps the staging table `staging` (just created) in the run's row, so that a later run
/// can drop it should this one die.
pub async fn record_staging(
    pool: &PgPool,
    ledger: &Ledger,
    run_id: i64,
    staging: &TableName,
) -> anyhow::Result<()> {
    sqlx::query(&ledger.qualify(
        "UPDATE importer.runs
            SET (staging_schema, staging_name) =
                (SELECT n.nspname::text, c.relname::text
                   FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                  WHERE c.oid = to_regclass($2))
          WHERE id = $1",
    ))
    .bind(run_id)
    .bind(staging.quoted())
    .execute(pool)
    .await
    .with_context(|| format!("cannot record staging table {staging} in the run ledger"))?;
    Ok(())
}

/// A run found dead by [`bury_dead_runs`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadRun {
    /// Its ledger id.
    pub run_id: i64,
    /// The staging table it left, if it had one.
    pub staging: Option<TableName>,
}

/// Marks `died` every run into `table` still `running` whose lock backend is gone (the
/// caller holds the table's lock, so no live run can be loading it), and returns them.
pub async fn bury_dead_runs(
    pool: &PgPool,
    ledger: &Ledger,
    table: &TableName,
) -> anyhow::Result<Vec<DeadRun>> {
    let sql = ledger.qualify(
        "UPDATE importer.runs r
            SET outcome = $3, finished_at = clock_timestamp(),
                error = 'the run ended without recording its outcome (its process was killed, or lost the server for good)'
          WHERE r.table_schema = $1 AND r.table_name = $2 AND r.outcome = 'running'
            AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a
                             WHERE a.pid = r.lock_pid AND a.backend_start = r.lock_backend_start)
          RETURNING r.id, r.staging_schema, r.staging_name",
    );
    let rows: Vec<(i64, Option<String>, Option<String>)> = sqlx::query_as(&sql)
        .bind(table.schema.as_deref().unwrap_or_default())
        .bind(&table.name)
        .bind(RunOutcome::Died.name())
        .fetch_all(pool)
        .await
        .with_context(|| {
            format!("cannot look for dead runs into table {table} in the run ledger")
        })?;
    Ok(rows
        .into_iter()
        .map(|(run_id, schema, name)| DeadRun {
            run_id,
            staging: name.map(|name| TableName { schema, name }),
        })
        .collect())
}

/// A run as the chunk ledger tells it to someone outside its process (a service restarted
/// after it was killed, say).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunRows {
    /// Its ledger id.
    pub run_id: i64,
    /// The rows its committed chunks put in the table: none for a staged run (`--atomic`,
    /// `--mode replace`) that did not succeed, whose rows never reached the table.
    pub written: u64,
    /// Still `running` while its lock backend is gone: its process died without a word (the
    /// next run on the table records it `died`, as [`bury_dead_runs`] does).
    pub dead: bool,
}

/// [`RunRows`] of each of `run_ids` the ledger has; none at all without a chunk ledger.
///
/// Read without the table's lock, so a run counts as dead only when no backend has its lock
/// pid: a backend whose start this role may not see (another role's session) counts as the
/// lock's, and a run that has not recorded its lock backend yet counts as alive.
pub async fn run_rows(
    pool: &PgPool,
    ledger: &Ledger,
    run_ids: &[i64],
) -> anyhow::Result<Vec<RunRows>> {
    let cannot_read =
        || format!("cannot read the rows of runs from the chunk ledger {CHUNKS_TABLE}");
    let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(ledger.qualify("importer.chunks"))
        .fetch_one(pool)
        .await
        .with_context(cannot_read)?;
    if !exists || run_ids.is_empty() {
        return Ok(Vec::new());
    }
    let sql = ledger.qualify(
        "SELECT r.id,
                CASE WHEN r.staging_name IS NULL OR r.outcome IN ('succeeded', 'rejected_rows')
                     THEN (SELECT coalesce(sum(c.row_count), 0)::bigint
                             FROM importer.chunks c WHERE c.run_id = r.id)
                     ELSE 0 END,
                r.outcome = 'running' AND r.lock_pid IS NOT NULL
                AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a
                                 WHERE a.pid = r.lock_pid
                                   AND (a.backend_start IS NULL
                                        OR a.backend_start = r.lock_backend_start))
           FROM importer.runs r
          WHERE r.id = ANY($1)",
    );
    let rows: Vec<(i64, i64, bool)> = sqlx::query_as(&sql)
        .bind(run_ids)
        .fetch_all(pool)
        .await
        .with_context(cannot_read)?;
    Ok(rows
        .into_iter()
        .map(|(run_id, written, dead)| RunRows {
            run_id,
            written: u64::try_from(written).unwrap_or_default(),
            dead,
        })
        .collect())
}

/// The sheet rows that earlier unfinished runs of the same content put in the table: what a
/// resumed run skips. Ranges of sheet row numbers, sorted and merged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommittedRows {
    ranges: Vec<(i64, i64)>,
    row_count: u64,
    run_ids: Vec<i64>,
}

impl CommittedRows {
    /// Builds the set from `(first_row, last_row, row_count, run_id)` units in any order.
    pub fn from_units(units: &[(i64, i64, i64, i64)]) -> Self {
        let mut sorted = units.to_vec();
        sorted.sort_unstable();
        let mut ranges: Vec<(i64, i64)> = Vec::with_capacity(sorted.len());
        let mut run_ids = Vec::new();
        let mut row_count = 0;
        for &(first, last, rows, run_id) in &sorted {
            row_count += u64::try_from(rows).unwrap_or_default();
            if !run_ids.contains(&run_id) {
                run_ids.push(run_id);
            }
            match ranges.last_mut() {
                Some((_, previous_last)) if first <= *previous_last + 1 => {
                    *previous_last = (*previous_last).max(last);
                }
                _ => ranges.push((first, last)),
            }
        }
        run_ids.sort_unstable();
        CommittedRows {
            ranges,
            row_count,
            run_ids,
        }
    }

    /// Whether sheet row `row_number` is within a unit that was committed.
    pub fn covers(&self, row_number: u32) -> bool {
        let row = i64::from(row_number);
        let after = self.ranges.partition_point(|&(first, _)| first <= row);
        after > 0 && row <= self.ranges[after - 1].1
    }

    /// Whether nothing is in yet.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Rows in the table from those runs.
    pub fn row_count(&self) -> u64 {
        self.row_count
    }

    /// The runs the rows come from, oldest first.
    pub fn run_ids(&self) -> &[i64] {
        &self.run_ids
    }
}

/// The rows that runs of this content (`sha256`, `sheet`) into `table` put in it and that no
/// complete load of the same content followed: runs that failed, were cancelled or died,
/// loading straight into the table (a staged run leaves nothing behind).
pub async fn committed_rows(
    pool: &PgPool,
    ledger: &Ledger,
    table: &TableName,
    sha256: &str,
    sheet: &str,
) -> anyhow::Result<CommittedRows> {
    let sql = ledger.qualify(
        "SELECT c.first_row, c.last_row, c.row_count, c.run_id
           FROM importer.chunks c
           JOIN importer.runs r ON r.id = c.run_id
          WHERE r.table_schema = $1 AND r.table_name = $2 AND r.sha256 = $3 AND r.sheet = $4
            AND r.outcome IN ('failed', 'cancelled', 'died') AND r.staging_name IS NULL
            AND r.id > coalesce((SELECT max(id) FROM importer.runs
                                  WHERE table_schema = $1 AND table_name = $2 AND sha256 = $3
                                    AND outcome IN ('succeeded', 'rejected_rows')), 0)",
    );
    let units: Vec<(i64, i64, i64, i64)> = sqlx::query_as(&sql)
        .bind(table.schema.as_deref().unwrap_or_default())
        .bind(&table.name)
        .bind(sha256)
        .bind(sheet)
        .fetch_all(pool)
        .await
        .with_context(|| {
            format!("cannot read what earlier runs put in table {table} from {CHUNKS_TABLE}")
        })?;
    Ok(CommittedRows::from_units(&units))
}

/// Notes in the ledger that run `run_id` resumes `previous_run_id`.
pub async fn record_resumed(
    pool: &PgPool,
    ledger: &Ledger,
    run_id: i64,
    previous_run_id: i64,
) -> anyhow::Result<()> {
    sqlx::query(&ledger.qualify("UPDATE importer.runs SET previous_run_id = $2 WHERE id = $1"))
        .bind(run_id)
        .bind(previous_run_id)
        .execute(pool)
        .await
        .with_context(|| {
            format!(
                "cannot record in the run ledger that run {run_id} resumes run {previous_run_id}"
            )
        })?;
    Ok(())
}

/// What a run's writers need to record their chunks.
#[derive(Debug, Clone)]
pub struct ChunkLedger {
    /// The run's id in the ledger's `runs`.
    pub run_id: i64,
    /// The ledger (its schema) the run's chunks are recorded in.
    pub ledger: Ledger,
    /// The run's hold on its table, checked at each commit.
    pub fence: Fence,
    /// `--connect-timeout`: how long the end of a run keeps trying to reach the server to
    /// count what is durable.
    pub connect_timeout: Duration,
}

/// The ledger entry of one write: the run, and the sheet rows the write covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkMark {
    /// The ledger the write is recorded in.
    pub ledger: Ledger,
    /// The run's id.
    pub run_id: i64,
    /// The run's hold on its table.
    pub fence: Fence,
    /// Sheet row number of the first row written.
    pub first_row: i64,
    /// Sheet row number of the last row written.
    pub last_row: i64,
}

impl ChunkMark {
    /// The mark of a write of `rows` (in sheet order) by run `run_id`.
    pub fn new(chunk_ledger: &ChunkLedger, rows: &[ConvertedRow]) -> Self {
        let row_number =
            |row: Option<&ConvertedRow>| row.map_or(0, |row| i64::from(row.row_number));
        ChunkMark {
            ledger: chunk_ledger.ledger.clone(),
            run_id: chunk_ledger.run_id,
            fence: chunk_ledger.fence,
            first_row: row_number(rows.first()),
            last_row: row_number(rows.last()),
        }
    }

    /// `SELECT importer.record_chunk(...)` with the mark's own integers inlined, for a
    /// simple-query message that also carries the COMMIT (one round trip). Only integers of
    /// ours are formatted into it, never a value from the file.
    pub fn record_sql(&self, row_count: u64) -> String {
        let Fence {
            token,
            lock_key,
            lock_pid,
            lock_backend_start,
        } = self.fence;
        self.ledger.qualify(&format!(
            "SELECT importer.record_chunk({}, {}, {}, {row_count}, {token}, {lock_key}, {lock_pid}, {lock_backend_start})",
            self.run_id, self.first_row, self.last_row
        ))
    }
}

/// Whether the chunk ledger's objects are of this version (see [`CHUNK_LEDGER_VERSION`]):
/// one catalog lookup, no lock. Its objects are created last in the ledger's set-up, in the
/// same transaction as the rest, so this also tells whether the whole ledger is set up.
pub(crate) async fn chunk_ledger_is_current<'c>(
    executor: impl sqlx::PgExecutor<'c>,
    ledger: &Ledger,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT coalesce(obj_description(to_regprocedure($1), 'pg_proc') LIKE $2, false)",
    )
    .bind(ledger.qualify(RECORD_CHUNK_SIGNATURE))
    .bind(format!("importer chunk ledger {CHUNK_LEDGER_VERSION}:%"))
    .fetch_one(executor)
    .await
}

/// The DDL that creates the chunk ledger or upgrades an earlier version of it, for
/// `ledger::create_ledger`, which runs it after the runs table's, under the set-up lock.
pub(crate) fn chunk_ledger_sql(ledger: &Ledger) -> String {
    ledger.qualify(&CREATE_CHUNK_LEDGER.replace("VERSION", CHUNK_LEDGER_VERSION))
}

/// The rows the chunk ledger holds for `run_id`, made durable first: the sum is read and
/// then the transaction commits synchronously, which flushes the write-ahead log past every
/// commit the sum saw. So the figure returned survives a crash of the server.
pub async fn durable_row_count(
    connection: &mut PgConnection,
    ledger: &Ledger,
    run_id: i64,
) -> Result<u64, sqlx::Error> {
    let mut transaction = connection.begin().await?;
    sqlx::query("SET LOCAL synchronous_commit TO on")
        .execute(&mut *transaction)
        .await?;
    // txid_current() gives the transaction an id, so that its commit is written and waited for
    let sql = ledger.qualify(
        "SELECT (SELECT coalesce(sum(row_count), 0)::bigint FROM importer.chunks WHERE run_id = $1),
                txid_current()",
    );
    let (row_count, _): (i64, i64) = sqlx::query_as(&sql)
        .bind(run_id)
        .fetch_one(&mut *transaction)
        .await?;
    transaction.commit().await?;
    Ok(u64::try_from(row_count).unwrap_or_default())
}

/// [`durable_row_count`] through the pool, bounded in time: the periodic check while a run
/// writes, and the first try at its end. `None` when the server did not answer.
pub async fn try_durable_row_count(
    pool: &PgPool,
    ledger: &Ledger,
    run_id: i64,
    bound: Duration,
) -> Option<u64> {
    let attempt = async {
        let mut connection = pool.acquire().await?;
        durable_row_count(&mut connection, ledger, run_id).await
    };
    match tokio::time::timeout(bound, attempt).await {
        Ok(Ok(row_count)) => Some(row_count),
        Ok(Err(error)) => {
            warn!(error = %super::error_message(&error), "cannot count the durable rows of this run yet");
            None
        }
        Err(_) => None,
    }
}

/// The durable row count of the run at its end: through the pool when it still works,
/// otherwise on a new connection retried for up to `--connect-timeout` (the server may be
/// restarting after a crash). Fails when the server cannot be reached in that time.
pub async fn settle_row_count(pool: &PgPool, ledger: &ChunkLedger) -> anyhow::Result<u64> {
    let started = Instant::now();
    if let Some(row_count) =
        try_durable_row_count(pool, &ledger.ledger, ledger.run_id, POOL_ATTEMPT_TIME).await
    {
        return Ok(row_count);
    }
    let remaining = ledger.connect_timeout.saturating_sub(started.elapsed());
    let mut connection = super::reconnect(pool, remaining).await?;
    let row_count = durable_row_count(&mut connection, &ledger.ledger, ledger.run_id)
        .await
        .with_context(|| {
            format!(
                "cannot count the rows of run {} in {CHUNKS_TABLE}",
                ledger.run_id
            )
        })?;
    connection.close().await.ok(); // the count is what matters; the server closes it anyway
    Ok(row_count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_rows_merge_touching_units_and_keep_the_gaps() {
        // units of two runs, out of order; row 6 was rejected, rows 12-19 never written
        let rows = CommittedRows::from_units(&[(7, 11, 5, 2), (2, 5, 4, 1), (20, 20, 1, 2)]);
        assert_eq!(rows.ranges, vec![(2, 5), (7, 11), (20, 20)]);
        assert_eq!(rows.row_count(), 10);
        assert_eq!(rows.run_ids(), &[1, 2]);
        let covered: Vec<u32> = (1..=21).filter(|&row| rows.covers(row)).collect();
        assert_eq!(covered, vec![2, 3, 4, 5, 7, 8, 9, 10, 11, 20]);
        let touching = CommittedRows::from_units(&[(2, 5, 4, 1), (6, 9, 4, 1)]);
        assert_eq!(touching.ranges, vec![(2, 9)]);
        assert!(CommittedRows::default().is_empty());
        assert!(!CommittedRows::default().covers(1));
    }
}
