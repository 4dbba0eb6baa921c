//! `copy`: workers sending one `COPY ... FROM STDIN` (text format) per `--batch-size` rows.
//! Rows are validated and converted client-side first; a chunk the server still refuses (a
//! unique or check constraint) is split in halves down to single rows.

use std::sync::Arc;

use super::{ChunkWriter, RunReport, drive};
use crate::job::ImportJob;
use crate::sink::copy::CopyStatement;

/// Writes each chunk of `job.batch_size` rows with one COPY, on `job.workers` connections.
pub(super) async fn run(job: Arc<ImportJob>) -> RunReport {
    let writer = ChunkWriter::Copy(CopyStatement::new(
        &job.table,
        &job.columns,
        job.conflict.as_deref(),
    ));
    let (batch_size, workers) = (job.batch_size, job.workers);
    drive(job, batch_size, workers, writer).await
}
