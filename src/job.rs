//! [`ImportJob`]: everything a strategy needs to run one import, settled before any row is
//! written (file and sheet read, header mapped, table known, pool and rejects log open).

use std::sync::Arc;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::progress::RowCounter;
use crate::rejects::RejectLog;
use crate::schema::Column;
use crate::sink::TargetTable;
use crate::sink::chunks::{ChunkLedger, CommittedRows};
use crate::source::{Header, SourceSpec};

/// One import, ready to run.
pub struct ImportJob {
    /// Where the rows come from.
    pub source: SourceSpec,
    /// The header row that was mapped.
    pub header: Header,
    /// The target table.
    pub table: TargetTable,
    /// The target column of each sheet column, in sheet order.
    pub columns: Vec<Column>,
    /// Connections to the server; at least `workers` of them.
    pub pool: PgPool,
    /// Writer connections (1 for sequential).
    pub workers: usize,
    /// Rows per INSERT (batch) or per COPY chunk (copy).
    pub batch_size: usize,
    /// Where rejected rows are recorded.
    pub rejects: Arc<RejectLog>,
    /// Upsert: positions (in `columns`) of the key columns; empty otherwise. Of rows with the
    /// same key, only the last is written: the earlier ones are rejected as superseded.
    pub key_positions: Vec<usize>,
    /// Upsert straight into the target: the `ON CONFLICT ...` clause every write ends in.
    pub conflict: Option<String>,
    /// Rows handed on by the reader so far, for the progress display only.
    pub progress: RowCounter,
    /// Rows written so far (committed, or counted by a dry run), for progress reports only.
    pub written: RowCounter,
    /// The run's chunk ledger: `None` for `--dry-run`, `importer bench` and runs without a
    /// ledger entry, whose writes are not recorded.
    pub chunk_ledger: Option<ChunkLedger>,
    /// Resuming: the sheet rows earlier runs of the same content already put in the table;
    /// the reader skips them (they are neither read nor counted again).
    pub already_in: Option<Arc<CommittedRows>>,
    /// Cancelled on Ctrl-C/SIGTERM, a fatal error or once --max-errors is passed: the reader
    /// stops, the writers finish what was already read.
    pub cancel: CancellationToken,
}
