//! `concurrent`: a bounded pool of workers, each on its own pooled connection, taking rows
//! from the reader's bounded tokio mpsc channel and writing one `INSERT ... VALUES` per row.
//!
//! Channel choice: tokio's mpsc has one receiver, so the workers share it as
//! `Arc<tokio::sync::Mutex<Receiver>>`, locked only around `recv().await` (see
//! `strategy::drive`). One shared queue balances load by itself: a worker slowed by a lock
//! or a retry simply takes fewer rows.

use std::sync::Arc;

use super::sequential::ROWS_PER_CHUNK;
use super::{ChunkWriter, RunReport, drive};
use crate::job::ImportJob;
use crate::sink::insert::InsertStatement;

/// Writes every row with its own INSERT, on `job.workers` connections at once.
pub(super) async fn run(job: Arc<ImportJob>) -> RunReport {
    let writer = ChunkWriter::RowByRow(InsertStatement::new(
        &job.table,
        &job.columns,
        job.conflict.as_deref(),
    ));
    let workers = job.workers;
    drive(job, ROWS_PER_CHUNK, workers, writer).await
}
