//! Strategies: how converted rows are grouped and written. All four share one driver: the
//! pipeline's reader feeds a bounded channel, `worker_count` workers take chunks from it and
//! write them with a [`ChunkWriter`]; a chunk the server refuses is split in halves down to
//! single rows so that only the offending rows are rejected. The strategies differ only in
//! chunk size, worker count and writer, which is all their files say.
//!
//! A run with a ledger entry records every committed piece in the chunk ledger, in the
//! piece's own transaction (see `sink::chunks`), and reports the rows that ledger holds once
//! they are durable: never the writers' count of acknowledged commits, which a crash of the
//! server can undo (commits are asynchronous). While the writers run, the durable count is
//! taken every [`DURABLE_CHECK_INTERVAL`], so that a run that cannot reach the server again
//! at its end can still say how many rows are in for certain.

mod batch;
mod concurrent;
mod copy;
mod sequential;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sqlx::PgConnection;
use tokio::sync::{Mutex, mpsc};
use tokio::task::JoinSet;
use tracing::{Instrument, info_span, warn};

use crate::convert::Rejection;
use crate::job::ImportJob;
use crate::pipeline::{self, Chunk, ConvertedRow, TaskOutcome};
use crate::sink::chunks::{self, ChunkLedger, ChunkMark};
use crate::sink::copy::CopyStatement;
use crate::sink::insert::InsertStatement;
use crate::sink::{error_column, error_message, flush_commits, is_row_error};
use crate::stats::Tally;

/// How rows are written to PostgreSQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// One INSERT per row on one connection.
    Sequential,
    /// A bounded pool of workers, one INSERT per row each.
    Concurrent,
    /// Workers sending multi-row INSERTs of `batch_size` rows.
    Batch,
    /// Workers sending COPY FROM STDIN chunks of `batch_size` rows.
    Copy,
}

impl Method {
    /// Every method, in the order the contract lists them.
    pub const ALL: [Method; 4] = [
        Method::Sequential,
        Method::Concurrent,
        Method::Batch,
        Method::Copy,
    ];

    /// The contract's name of the method (CLI value and JSON `method`).
    pub fn name(self) -> &'static str {
        match self {
            Method::Sequential => "sequential",
            Method::Concurrent => "concurrent",
            Method::Batch => "batch",
            Method::Copy => "copy",
        }
    }

    /// The method named `name` (as the CLI and the JSON spell it).
    pub fn from_name(name: &str) -> Option<Method> {
        Method::ALL.into_iter().find(|method| method.name() == name)
    }
}

/// Times a piece is retried after a deadlock or serialization failure before the run fails.
const CONFLICT_RETRIES: u32 = 3;

/// How often the rows of a running import are made durable and counted: the "confirmed"
/// figure of a run that loses the server for good is at most this old.
const DURABLE_CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// What a strategy's run came to: the merged tally, and the fatal error that stopped it.
pub struct RunReport {
    /// Everything counted, by the reader and by every writer.
    pub tally: Tally,
    /// The first fatal error, if the run stopped on one.
    pub error: Option<anyhow::Error>,
    /// Set when the server could not be reached at the end to count the durable rows: the
    /// rows whose commit was acknowledged ("at most"); `tally.success_count` then holds the
    /// rows last confirmed durable ("at least").
    pub unconfirmed: Option<u64>,
}

/// Runs `job` with `method`.
pub async fn run(method: Method, job: Arc<ImportJob>) -> RunReport {
    match method {
        Method::Sequential => sequential::run(job).await,
        Method::Concurrent => concurrent::run(job).await,
        Method::Batch => batch::run(job).await,
        Method::Copy => copy::run(job).await,
    }
}

/// `--dry-run`: the pipeline reads and converts every row (rejecting what conversion
/// refuses) and the rows that would be written are counted, not sent.
pub async fn dry_run(job: Arc<ImportJob>) -> RunReport {
    let mut tasks = JoinSet::new();
    let mut receiver = pipeline::start(&job, job.batch_size, &mut tasks);
    let mut tally = Tally::default();
    while let Some(chunk) = receiver.recv().await {
        tally.success_count += chunk.len() as u64;
        job.written.add(chunk.len() as u64);
    }
    let (counted, error) = join_all(&mut tasks, &job).await;
    tally += counted;
    RunReport {
        tally,
        error,
        unconfirmed: None,
    }
}

/// How the rows of a chunk reach the table.
#[derive(Debug, Clone)]
enum ChunkWriter {
    /// One `INSERT ... VALUES` per row.
    RowByRow(InsertStatement),
    /// One multi-row INSERT per chunk.
    MultiRow(InsertStatement),
    /// One COPY per chunk.
    Copy(CopyStatement),
}

impl ChunkWriter {
    /// Writes `rows` all or nothing (RowByRow is only ever given one row at a time); with
    /// `chunk_ledger`, each commit also records its rows in the chunk ledger.
    async fn write(
        &self,
        connection: &mut PgConnection,
        rows: &[ConvertedRow],
        chunk_ledger: Option<&ChunkLedger>,
    ) -> Result<u64, sqlx::Error> {
        match self {
            ChunkWriter::RowByRow(statement) => {
                let mut written = 0;
                for row in rows {
                    let mark = chunk_ledger
                        .map(|ledger| ChunkMark::new(ledger, std::slice::from_ref(row)));
                    written += statement.insert_row(connection, row, mark.as_ref()).await?;
                }
                Ok(written)
            }
            ChunkWriter::MultiRow(statement) => {
                let mark = chunk_ledger.map(|ledger| ChunkMark::new(ledger, rows));
                statement.insert_rows(connection, rows, mark.as_ref()).await
            }
            ChunkWriter::Copy(statement) => {
                let mark = chunk_ledger.map(|ledger| ChunkMark::new(ledger, rows));
                statement.copy_rows(connection, rows, mark.as_ref()).await
            }
        }
    }

    /// Whether a piece this long is written as one statement (and so can be split).
    fn piece_rows(&self, rows: usize) -> usize {
        match self {
            ChunkWriter::RowByRow(_) => 1,
            ChunkWriter::MultiRow(_) | ChunkWriter::Copy(_) => rows,
        }
    }
}

/// The channel's receiving end, shared by the workers. A tokio mutex is held only around
/// `recv().await`, so a worker that is writing never blocks the others from taking chunks.
type SharedReceiver = Arc<Mutex<mpsc::Receiver<Chunk>>>;

/// Starts the pipeline and `worker_count` writers, drains them all and merges their tallies.
/// On the first fatal error the job is cancelled: the reader stops and the other writers
/// finish the chunks already read, so every row read is accounted for where possible.
async fn drive(
    job: Arc<ImportJob>,
    chunk_rows: usize,
    worker_count: usize,
    writer: ChunkWriter,
) -> RunReport {
    let mut tasks = JoinSet::new();
    let receiver: SharedReceiver =
        Arc::new(Mutex::new(pipeline::start(&job, chunk_rows, &mut tasks)));
    for worker in 0..worker_count {
        let span = info_span!("worker", worker);
        tasks.spawn(
            write_chunks(Arc::clone(&job), Arc::clone(&receiver), writer.clone()).instrument(span),
        );
    }
    drop(receiver);

    let Some(ledger) = job.chunk_ledger.clone() else {
        let (tally, mut first_error) = join_all(&mut tasks, &job).await;
        // commits were asynchronous: make every row counted durable before it is reported
        if tally.success_count > 0
            && let Err(error) = flush_commits(&job.pool).await
        {
            first_error.get_or_insert(error);
        }
        return RunReport {
            tally,
            error: first_error,
            unconfirmed: None,
        };
    };
    let (tally, first_error, confirmed) = join_confirming(&mut tasks, &job, &ledger).await;
    settle(&job, &ledger, tally, first_error, confirmed).await
}

/// [`join_all`], while taking the run's durable row count every [`DURABLE_CHECK_INTERVAL`].
/// Returns the last count confirmed beside the tally.
async fn join_confirming(
    tasks: &mut JoinSet<TaskOutcome>,
    job: &ImportJob,
    ledger: &ChunkLedger,
) -> (Tally, Option<anyhow::Error>, u64) {
    let joined = join_all(tasks, job);
    tokio::pin!(joined);
    let mut checks = tokio::time::interval(DURABLE_CHECK_INTERVAL);
    checks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    checks.tick().await; // the first tick is immediate: nothing is written yet
    let mut confirmed = 0;
    loop {
        tokio::select! {
            (tally, first_error) = &mut joined => return (tally, first_error, confirmed),
            _ = checks.tick() => {
                // the writers go on meanwhile: they are tasks of their own
                if let Some(row_count) = chunks::try_durable_row_count(&job.pool, &ledger.ledger, ledger.run_id, DURABLE_CHECK_INTERVAL).await {
                    confirmed = confirmed.max(row_count);
                }
            }
        }
    }
}

/// The end of a ledgered run: the rows it reports are the rows the chunk ledger holds once
/// durable, counted again after a lost connection (within `--connect-timeout`). When the
/// server cannot be reached, the report says at least `confirmed`, at most the rows whose
/// commit was acknowledged.
async fn settle(
    job: &ImportJob,
    ledger: &ChunkLedger,
    mut tally: Tally,
    mut first_error: Option<anyhow::Error>,
    confirmed: u64,
) -> RunReport {
    let acknowledged = tally.success_count;
    match chunks::settle_row_count(&job.pool, ledger).await {
        Ok(durable) => {
            if durable != acknowledged {
                warn!(
                    acknowledged,
                    durable,
                    "the server lost commits it had acknowledged: counting the durable rows only"
                );
            }
            // rows acknowledged but lost by the server are neither in nor rejected
            tally.success_count = durable;
            RunReport {
                tally,
                error: first_error,
                unconfirmed: None,
            }
        }
        Err(error) => {
            tally.success_count = confirmed.min(acknowledged);
            let error = error.context(format!(
                "cannot count the rows of this run in {}",
                chunks::CHUNKS_TABLE
            ));
            match &first_error {
                Some(_) => {
                    warn!(error = %format!("{error:#}"), "the rows written cannot be confirmed")
                }
                None => first_error = Some(error),
            }
            RunReport {
                tally,
                error: first_error,
                unconfirmed: Some(acknowledged),
            }
        }
    }
}

/// Drains `tasks` and merges their tallies. The first fatal error (or panic) cancels the
/// job, so the reader stops while the other tasks finish what was already read.
async fn join_all(
    tasks: &mut JoinSet<TaskOutcome>,
    job: &ImportJob,
) -> (Tally, Option<anyhow::Error>) {
    let mut tally = Tally::default();
    let mut first_error: Option<anyhow::Error> = None;
    while let Some(joined) = tasks.join_next().await {
        let (counted, result) = joined.unwrap_or_else(|join_error| {
            let error = anyhow::Error::new(join_error).context("a worker panicked");
            (Tally::default(), Err(error))
        });
        tally += counted;
        if let Err(error) = result {
            job.cancel.cancel();
            first_error.get_or_insert(error);
        }
    }
    (tally, first_error)
}

/// One writer: takes chunks until the channel is closed and writes each one on its own
/// pooled connection. A fatal error ends the writer; rows of its unfinished chunk are not
/// counted (they are not known to be in).
async fn write_chunks(
    job: Arc<ImportJob>,
    receiver: SharedReceiver,
    writer: ChunkWriter,
) -> TaskOutcome {
    let mut tally = Tally::default();
    let result = async {
        let mut connection = job
            .pool
            .acquire()
            .await
            .context("cannot get a database connection for a writer")?;
        loop {
            let next = receiver.lock().await.recv().await;
            let Some(chunk) = next else {
                return Ok(());
            };
            let written =
                write_isolating_rejects(&job, &mut connection, &writer, &chunk, &mut tally).await;
            if written.is_err() {
                // the connection may be mid-protocol (a COPY cut short): never reuse it
                connection.close_on_drop();
            }
            written?;
        }
    }
    .await;
    (tally, result)
}

/// Writes a chunk; a piece the server refuses for its data is split in halves until the
/// offending rows stand alone and are rejected (a unique violation in row 517 of 1000 costs
/// exactly that row). Each piece commits on its own.
async fn write_isolating_rejects(
    job: &ImportJob,
    connection: &mut PgConnection,
    writer: &ChunkWriter,
    chunk: &[ConvertedRow],
    tally: &mut Tally,
) -> anyhow::Result<()> {
    let piece_rows = writer.piece_rows(chunk.len()).max(1);
    let mut pending: Vec<(&[ConvertedRow], u32)> = chunk
        .chunks(piece_rows)
        .rev()
        .map(|piece| (piece, 0))
        .collect();
    while let Some((piece, attempt)) = pending.pop() {
        let error = match writer
            .write(connection, piece, job.chunk_ledger.as_ref())
            .await
        {
            Ok(_) => {
                tally.success_count += piece.len() as u64;
                job.written.add(piece.len() as u64);
                continue;
            }
            Err(error) => error,
        };
        if is_conflict(&error) && attempt < CONFLICT_RETRIES {
            pending.push((piece, attempt + 1));
        } else if !is_row_error(&error) {
            let first = piece.first().map_or(0, |row| row.row_number);
            return Err(anyhow::Error::new(error)).with_context(|| {
                format!(
                    "writing rows from row {first} into table {} failed",
                    job.table.name
                )
            });
        } else if let [row] = piece {
            tally.error_count += 1;
            let rejection = Rejection {
                column: error_column(&error),
                reason: error_message(&error),
            };
            job.rejects
                .record(row.row_number, &rejection, &row.cell_texts())?;
        } else {
            let (left, right) = piece.split_at(piece.len() / 2);
            pending.push((right, attempt));
            pending.push((left, attempt));
        }
    }
    Ok(())
}

/// A deadlock or serialization failure: the piece is fine, it met a concurrent writer.
fn is_conflict(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(database) if matches!(database.code().as_deref(), Some("40P01" | "40001")))
}
