//! One import as a library call: [`ImportOptions`] (plain data, no clap) and an
//! [`ImportControl`] (cancel token, progress sink) in, an [`ImportReport`] or an
//! [`ImportFailure`] with its [`FailureKind`] out. `importer run` and the upload service are
//! two callers of [`run`]; exit codes, HTTP statuses and printing stay with them.

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

pub use crate::source::{CsvOptions, XlsxReader};
pub use crate::stats::ImportStats;
pub use crate::strategy::Method;

/// What a run does to the rows already in the table.
pub use crate::cli::Mode;

/// Everything one import needs to know, as plain data.
#[derive(Clone)]
pub struct ImportOptions {
    /// The workbook or CSV file (`-` reads standard input).
    pub file: PathBuf,
    /// The name the stats' `file` and messages show; default: `file`'s name.
    pub display_name: Option<String>,
    /// Target table, may be schema-qualified; default: the file's stem, folded.
    pub table: Option<String>,
    /// Sheet name, or 0-based index; default: the first sheet.
    pub sheet: Option<String>,
    /// 1-based row that holds the column names.
    pub header_row: u32,
    /// How rows are written.
    pub method: Method,
    /// Worker connections (concurrent, batch, copy); default: the available cores.
    pub workers: Option<u16>,
    /// Rows per INSERT (batch) or per COPY chunk (copy).
    pub batch_size: u32,
    /// Append, replace or upsert.
    pub mode: Mode,
    /// Key columns of an upsert.
    pub key: Vec<String>,
    /// Load through a staging table and publish in one transaction.
    pub atomic: bool,
    /// Stop once more than this many rows have been rejected.
    pub max_errors: Option<u64>,
    /// Write every rejected row to this CSV file.
    pub rejects: Option<PathBuf>,
    /// Read and convert every row, write nothing to the database.
    pub dry_run: bool,
    /// Create a missing table from the sheet (the CLI's `--no-create` turns it off).
    pub create_table: bool,
    /// Skip the import when this content was already loaded into the table.
    pub skip_unchanged: bool,
    /// Continue after the rows earlier unfinished runs of the same content committed.
    pub resume: bool,
    /// Wait this long for another run on the same table; `None` fails at once.
    pub wait_lock: Option<Duration>,
    /// replace: how long the swap keeps trying for the table's lock.
    pub swap_timeout: Duration,
    /// Also write the stats JSON to this file.
    pub summary: Option<PathBuf>,
    /// PostgreSQL URL or libpq keyword string; `None`: the `PG*` variables, else the
    /// docker-compose.yml server.
    pub database_url: Option<String>,
    /// Keep retrying a failed first connection for this long.
    pub connect_timeout: Duration,
    /// Schema of the run ledger; `None` records nothing (the run lock is still taken).
    pub ledger_schema: Option<String>,
    /// How a CSV input is read.
    pub csv: CsvOptions,
    /// Reader of .xlsx/.xlsm files.
    pub xlsx_reader: XlsxReader,
    /// How many rejected rows [`ImportReport::rejections`] keeps (0 for the CLI).
    pub kept_rejections: usize,
}

impl ImportOptions {
    /// The CLI's defaults for `file`, connecting to `database_url`.
    pub fn new(file: PathBuf, database_url: impl Into<String>) -> Self {
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
            summary: None,
            database_url: Some(database_url.into()),
            connect_timeout: Duration::from_secs(30),
            ledger_schema: Some(DEFAULT_LEDGER_SCHEMA.to_string()),
            csv: CsvOptions::default(),
            xlsx_reader: XlsxReader::Fast,
            kept_rejections: 0,
        }
    }
}

/// The run ledger's schema by default.
pub const DEFAULT_LEDGER_SCHEMA: &str = "importer";

impl fmt::Debug for ImportOptions {
    // the database URL may hold a password: never shown
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("ImportOptions")
            .field("file", &self.file)
            .field("display_name", &self.display_name)
            .field("table", &self.table)
            .field("sheet", &self.sheet)
            .field("header_row", &self.header_row)
            .field("method", &self.method)
            .field("workers", &self.workers)
            .field("batch_size", &self.batch_size)
            .field("mode", &self.mode)
            .field("key", &self.key)
            .field("atomic", &self.atomic)
            .field("max_errors", &self.max_errors)
            .field("rejects", &self.rejects)
            .field("dry_run", &self.dry_run)
            .field("create_table", &self.create_table)
            .field("skip_unchanged", &self.skip_unchanged)
            .field("resume", &self.resume)
            .field("wait_lock", &self.wait_lock)
            .field("swap_timeout", &self.swap_timeout)
            .field("summary", &self.summary)
            .field(
                "database_url",
                &self.database_url.as_ref().map(|_| "<redacted>"),
            )
            .field("connect_timeout", &self.connect_timeout)
            .field("ledger_schema", &self.ledger_schema)
            .field("csv", &self.csv)
            .field("xlsx_reader", &self.xlsx_reader)
            .field("kept_rejections", &self.kept_rejections)
            .finish()
    }
}

/// Rows a running import has got through so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RowsSoFar {
    /// Data rows read from the file.
    pub read: u64,
    /// Rows written (committed or sent).
    pub written: u64,
    /// Rows rejected.
    pub rejected: u64,
}

/// Where a running import reports how far it is; every method has a default that ignores it.
pub trait ProgressSink: Send + Sync {
    /// The run is recorded in the ledger as `run_id` (`None`: no ledger, or a dry run).
    fn started(&self, run_id: Option<i64>) {
        let _ = run_id;
    }

    /// Rows so far; called at most about ten times a second.
    fn rows(&self, rows: RowsSoFar) {
        let _ = rows;
    }
}

/// How the caller steers a running import.
#[derive(Clone, Default)]
pub struct ImportControl {
    /// Cancelled: the run stops reading, finishes the rows it read and ends `Cancelled`.
    pub cancel: CancellationToken,
    /// Told the run id and the rows so far.
    pub progress: Option<Arc<dyn ProgressSink>>,
    /// What cancelled the run (`SIGTERM`, `the service's shutdown`), set before `cancel`
    /// fires: logs and the ledger say `stopped by {cause}`.
    pub cancel_cause: Arc<OnceLock<String>>,
}

impl ImportControl {
    /// A control nobody has cancelled, without a progress sink.
    pub fn new() -> Self {
        ImportControl::default()
    }

    /// Cancels the run, naming what cancelled it (the first cause given wins).
    pub fn cancel_because(&self, cause: &str) {
        self.cancel_cause.set(cause.to_string()).ok(); // a second cause changes nothing
        self.cancel.cancel();
    }

    /// What cancelled the run, as logs and the ledger name it.
    pub fn cause(&self) -> &str {
        self.cancel_cause
            .get()
            .map_or("a cancel request", String::as_str)
    }
}

/// How an import that ran to its end (or was cancelled) went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportOutcome {
    /// Every row is in.
    AllIn,
    /// The import finished but some rows were rejected.
    SomeRejected,
    /// Stopped by the cancel token after finishing the rows already read.
    Cancelled,
    /// `skip_unchanged`: this content was already loaded into the table; nothing was read.
    Skipped,
}

/// One rejected row, as the rejects file has it (without the cells).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RejectedRow {
    /// 1-based row number in the sheet.
    pub row_number: u32,
    /// The column at fault; `None` when the server refused the row as a whole.
    pub column: Option<String>,
    /// A short reason.
    pub reason: String,
}

/// What `skip_unchanged` found: the run that loaded this content before.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SkippedRun {
    /// The content's SHA-256.
    pub sha256: String,
    /// The ledger id of the run that loaded it.
    pub previous_run_id: i64,
    /// When that run finished (as the ledger prints it).
    pub previous_finished_at: String,
}

/// The result of an import that ended without a fatal error.
#[derive(Debug, Clone)]
pub struct ImportReport {
    /// The contract's stats (zero rows for a skipped or early-cancelled run).
    pub stats: ImportStats,
    /// How it ended.
    pub outcome: ImportOutcome,
    /// The run's ledger id (`None` with no ledger or a dry run).
    pub run_id: Option<i64>,
    /// The first [`ImportOptions::kept_rejections`] rejected rows.
    pub rejections: Vec<RejectedRow>,
    /// All rejected rows.
    pub rejected_total: u64,
    /// `Skipped`: the run that loaded this content before.
    pub skipped: Option<SkippedRun>,
}

/// What kind of failure ended an import, for an exit code or an HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// Options that make no sense together.
    Usage,
    /// The table is being loaded by another run.
    Locked,
    /// The file cannot be read, is not a spreadsheet, the sheet is missing, the header does not
    /// map, the table is missing with `create_table` off, or a value exceeds a limit.
    Input,
    /// The server is unreachable or was lost, or SQL failed for a reason not in the input.
    Database,
    /// A bug in importer.
    Internal,
}

/// An import that failed: what kind of failure, the error chain, and what was done before.
#[derive(Debug)]
pub struct ImportFailure {
    /// What kind of failure.
    pub kind: FailureKind,
    /// The error and its causes.
    pub error: anyhow::Error,
    /// The stats, when rows were processed before the failure.
    pub stats: Option<ImportStats>,
    /// The run's ledger id, when it was recorded.
    pub run_id: Option<i64>,
}

impl fmt::Display for ImportFailure {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{:#}", self.error)
    }
}

impl std::error::Error for ImportFailure {}

/// Runs one import to its end: the lock, the ledger row, the rows, the publish. Nothing is
/// printed on stdout; logs go through `tracing`.
pub async fn run(
    options: ImportOptions,
    control: ImportControl,
) -> Result<ImportReport, ImportFailure> {
    crate::cmd::run::run_library(options, control).await
}
