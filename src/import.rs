//! STUB of the library API agreed in API.md, so that `serve` compiles before the real one
//! (branch h-api) is merged; removed at that merge.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

pub use crate::cli::{Method, Mode, XlsxReader};
use crate::source::CsvOptions;
use crate::stats::ImportStats;

/// Options of one import.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    pub file: PathBuf,
    pub display_name: Option<String>,
    pub table: Option<String>,
    pub sheet: Option<String>,
    pub header_row: u32,
    pub method: Method,
    pub workers: Option<u16>,
    pub batch_size: u32,
    pub mode: Mode,
    pub key: Vec<String>,
    pub atomic: bool,
    pub max_errors: Option<u64>,
    pub rejects: Option<PathBuf>,
    pub dry_run: bool,
    pub create_table: bool,
    pub skip_unchanged: bool,
    pub resume: bool,
    pub wait_lock: Option<Duration>,
    pub swap_timeout: Duration,
    pub database_url: String,
    pub connect_timeout: Duration,
    pub ledger_schema: Option<String>,
    pub csv: CsvOptions,
    pub xlsx_reader: XlsxReader,
    pub kept_rejections: usize,
}

impl ImportOptions {
    /// CLI defaults.
    pub fn new(file: PathBuf, database_url: String) -> Self {
        ImportOptions {
            file,
            display_name: None,
            table: None,
            sheet: None,
            header_row: 1,
            method: Method::Batch,
            workers: None,
            batch_size: 1000,
            mode: Mode::Append,
            key: Vec::new(),
            atomic: false,
            max_errors: None,
            rejects: None,
            dry_run: false,
            create_table: true,
            skip_unchanged: false,
            resume: false,
            wait_lock: None,
            swap_timeout: Duration::from_secs(60),
            database_url,
            connect_timeout: Duration::from_secs(30),
            ledger_schema: Some("importer".to_string()),
            csv: CsvOptions::default(),
            xlsx_reader: XlsxReader::Fast,
            kept_rejections: 0,
        }
    }
}

/// Progress.
pub trait ProgressSink: Send + Sync {
    fn started(&self, _run_id: Option<i64>) {}
    fn rows(&self, _rows: RowsSoFar) {}
}

/// Rows so far.
#[derive(Debug, Clone, Copy, Default)]
pub struct RowsSoFar {
    pub read: u64,
    pub written: u64,
    pub rejected: u64,
}

/// Control.
pub struct ImportControl {
    pub cancel: CancellationToken,
    pub progress: Option<Arc<dyn ProgressSink>>,
}

/// Report.
#[derive(Debug)]
pub struct ImportReport {
    pub stats: ImportStats,
    pub outcome: ImportOutcome,
    pub run_id: Option<i64>,
    pub rejections: Vec<RejectedRow>,
    pub rejected_total: u64,
}

/// Outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportOutcome {
    AllIn,
    SomeRejected,
    Cancelled,
    Skipped,
}

/// A rejected row.
#[derive(Debug, Clone)]
pub struct RejectedRow {
    pub row_number: u64,
    pub column: Option<String>,
    pub reason: String,
}

/// Failure.
#[derive(Debug)]
pub struct ImportFailure {
    pub kind: FailureKind,
    pub error: anyhow::Error,
    pub stats: Option<ImportStats>,
    pub run_id: Option<i64>,
}

impl std::fmt::Display for ImportFailure {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "{:#}", self.error)
    }
}

/// Kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    Usage,
    Locked,
    Input,
    Database,
    Internal,
}

/// Run.
pub async fn run(
    _options: ImportOptions,
    _control: ImportControl,
) -> Result<ImportReport, ImportFailure> {
    Err(ImportFailure {
        kind: FailureKind::Internal,
        error: anyhow::anyhow!("the import API is not merged yet"),
        stats: None,
        run_id: None,
    })
}
