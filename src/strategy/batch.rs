//! `batch`: workers sending one multi-row INSERT per `--batch-size` rows
//! (`INSERT ... SELECT FROM UNNEST` of text arrays: one bind parameter per column, so the
//! batch size is never capped by PostgreSQL's 65,535-parameter limit). A refused batch is
//! split until only the offending rows are rejected.

use std::sync::Arc;

use super::{ChunkWriter, RunReport, drive};
use crate::job::ImportJob;
use crate::sink::insert::InsertStatement;

/// Writes each chunk of `job.batch_size` rows with one INSERT, on `job.workers` connections.
pub(super) async fn run(job: Arc<ImportJob>) -> RunReport {
    let writer = ChunkWriter::MultiRow(InsertStatement::new(
        &job.table,
        &job.columns,
        job.conflict.as_deref(),
    ));
    let (batch_size, workers) = (job.batch_size, job.workers);
    drive(job, batch_size, workers, writer).await
}
