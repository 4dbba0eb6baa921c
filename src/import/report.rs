//! What an import comes to: an [`ImportReport`], or an [`ImportFailure`] whose
//! [`FailureKind`] was attached where the error arose.

use std::fmt;

pub use crate::rejects::RejectedRow;
use crate::sink::lock::TableBusy;
use crate::stats::ImportStats;

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

/// What `skip_unchanged` found: this content was loaded into the table before. Serialised,
/// it is the JSON `importer run --skip-unchanged` prints and writes to `--summary`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SkippedRun {
    /// Always true: the JSON says the run was skipped.
    pub skipped: bool,
    /// The file's name.
    pub file: String,
    /// The table, as given.
    pub table: String,
    /// The content's SHA-256.
    pub sha256: String,
    /// The ledger id of the run that loaded it.
    pub previous_run_id: i64,
    /// The ledger id of this (skipped) run.
    pub run_id: i64,
    /// When the previous run finished, as the ledger prints it.
    #[serde(skip)]
    pub previous_finished_at: String,
    /// The table, schema-qualified.
    #[serde(skip)]
    pub qualified_table: String,
}

impl SkippedRun {
    /// The one line `--format text` prints.
    pub fn render_text(&self) -> String {
        format!(
            "skipped: {} (sha256 {}) was already loaded into {} by run {} at {}; nothing to do",
            self.file,
            self.sha256,
            self.qualified_table,
            self.previous_run_id,
            self.previous_finished_at
        )
    }
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

/// An error tagged with its [`FailureKind`] where it arose. It shows exactly as the error it
/// wraps (the same text, the same causes), so tagging never changes a message.
struct Tagged {
    kind: FailureKind,
    error: anyhow::Error,
}

impl fmt::Debug for Tagged {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.error, formatter)
    }
}

impl fmt::Display for Tagged {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        // the top message only: the causes follow in the chain, as they did untagged
        fmt::Display::fmt(&self.error, formatter)
    }
}

impl std::error::Error for Tagged {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.error.chain().nth(1)
    }
}

/// Tags `error` as a failure of `kind` (an error already tagged keeps its kind: the place
/// closest to the cause knows best).
pub(crate) fn tagged(error: anyhow::Error, kind: FailureKind) -> anyhow::Error {
    if error.chain().any(|cause| cause.is::<Tagged>()) {
        return error;
    }
    anyhow::Error::new(Tagged { kind, error })
}

/// Attaching a [`FailureKind`] to a result's error.
pub(crate) trait Failing<T> {
    /// Tags the error, if any, as a failure of `kind`.
    fn failing_as(self, kind: FailureKind) -> anyhow::Result<T>;
}

impl<T> Failing<T> for anyhow::Result<T> {
    fn failing_as(self, kind: FailureKind) -> anyhow::Result<T> {
        self.map_err(|error| tagged(error, kind))
    }
}

/// The kind of a failure: the outermost tag in its chain; untagged, a server error is the
/// input's fault when its SQLSTATE class says the data was wrong (22 data exception, 23
/// integrity violation), the database's otherwise, and anything else is the input's.
pub fn failure_kind(error: &anyhow::Error) -> FailureKind {
    if let Some(tagged) = error
        .chain()
        .find_map(|cause| cause.downcast_ref::<Tagged>())
    {
        return tagged.kind;
    }
    if error.chain().any(|cause| cause.is::<TableBusy>()) {
        return FailureKind::Locked;
    }
    match error
        .chain()
        .find_map(|cause| cause.downcast_ref::<sqlx::Error>())
    {
        Some(sqlx::Error::Database(database)) => match database.code().as_deref() {
            Some(code) if code.starts_with("22") || code.starts_with("23") => FailureKind::Input,
            _ => FailureKind::Database,
        },
        Some(_) => FailureKind::Database,
        None => FailureKind::Input,
    }
}

impl ImportFailure {
    /// The failure of `error`, of the kind attached where it arose.
    pub(crate) fn new(
        error: anyhow::Error,
        stats: Option<ImportStats>,
        run_id: Option<i64>,
    ) -> Self {
        ImportFailure {
            kind: failure_kind(&error),
            error,
            stats,
            run_id,
        }
    }
}
