//! `sequential`: the reference strategy. One connection, one `INSERT ... VALUES` per row,
//! each committed on its own; the other strategies must leave the same rows and stats.

use std::sync::Arc;

use super::{ChunkWriter, RunReport, drive};
use crate::job::ImportJob;
use crate::sink::insert::InsertStatement;

/// Rows per chunk from the reader: one, so a stop (Ctrl-C, --max-errors) is prompt.
pub(super) const ROWS_PER_CHUNK: usize = 1;

/// Writes every row with its own INSERT on one connection.
pub(super) async fn run(job: Arc<ImportJob>) -> RunReport {
    let writer = ChunkWriter::RowByRow(InsertStatement::new(
        &job.table,
        &job.columns,
        job.conflict.as_deref(),
    ));
    drive(job, ROWS_PER_CHUNK, 1, writer).await
}
