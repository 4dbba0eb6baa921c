//! [`ImportControl`]: how a caller steers a running import (its cancel token and the cause
//! it names) and hears how far it is ([`ProgressSink`]).

use std::ops::ControlFlow;
use std::sync::{Arc, OnceLock};

use tokio_util::sync::CancellationToken;

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

impl ImportControl {
    /// Runs `phase` unless the run is cancelled first, in which case `phase` is dropped where
    /// it stands: only phases that read, connect or wait (and create nothing) are run this way.
    pub(crate) async fn unless_cancelled<T>(
        &self,
        phase: impl Future<Output = anyhow::Result<T>>,
    ) -> anyhow::Result<ControlFlow<(), T>> {
        tokio::select! {
            // a cancel that came before the phase stops it before it starts
            biased;
            () = self.cancel.cancelled() => Ok(ControlFlow::Break(())),
            result = phase => result.map(ControlFlow::Continue),
        }
    }

    /// Whether the run was cancelled, without waiting.
    pub(crate) fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Tells the progress sink the run's ledger id.
    pub(crate) fn report_started(&self, run_id: Option<i64>) {
        if let Some(progress) = &self.progress {
            progress.started(run_id);
        }
    }
}
