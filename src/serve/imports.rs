//! The imports the service runs: each one a task in the service's [`TaskTracker`] (owned:
//! shutdown waits for them), limited to `--max-concurrent-imports` by a semaphore whose permit
//! the task holds until it ends, and cancelled through a child of one token when the shutdown
//! grace is over. While an import runs, its rows so far are kept here for `GET /imports/{id}`;
//! once it ends, its outcome is kept for a while too, and the run ledger has it for good.
//!
//! An import's rejects CSV is written in `--uploads` and, when the import ended with rejected
//! rows, kept as `rejects-ID.csv` for download: the newest `--keep-rejects` files, none older
//! than `--keep-rejects-hours` (pruned whenever an import ends).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use tempfile::TempPath;

use super::error::{ApiError, client_message};
use super::lock;
use super::metrics::Metrics;
use super::upload::Upload;
use crate::import::{
    self, FailureKind, ImportControl, ImportFailure, ImportOptions, ImportOutcome, ImportReport,
    ProgressSink, RejectedRow, RowsSoFar,
};
use crate::sink::chunks::RunRows;
use crate::sink::ledger::{RunEntry, RunOutcome};
use crate::stats::ImportStats;

/// Ended imports kept in memory (beyond them, `GET /imports/{id}` reads the run ledger).
const ENDED_KEPT: usize = 1000;

/// The error of a run whose process died without recording its outcome.
const DIED_MESSAGE: &str = "the run ended without recording its outcome (its process was killed, or lost the server for good); the next run on its table records it died";

/// How the rejects files are kept.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// At most this many files, the newest.
    pub count: usize,
    /// None older than this.
    pub age: Duration,
}

/// The running and recently ended imports.
pub(crate) struct Imports {
    tracker: TaskTracker,
    permits: Arc<Semaphore>,
    max_concurrent: usize,
    cancel: CancellationToken,
    live: Arc<Mutex<BTreeMap<i64, Arc<LiveImport>>>>,
    uploads: PathBuf,
    retention: Retention,
    metrics: Arc<Metrics>,
}

/// One import the service knows from memory.
#[derive(Debug)]
pub(crate) struct LiveImport {
    table: String,
    method: String,
    file: String,
    rows: Mutex<RowsSoFar>,
    ended: Mutex<Option<Ended>>,
}

/// How an import ended, as kept in memory.
#[derive(Debug, Clone)]
struct Ended {
    status: &'static str,
    stats: Option<ImportStats>,
    error: Option<String>,
    rejects: Vec<RejectedRow>,
    rejected_total: u64,
}

/// A started import: its ledger id once recorded, and its ending.
pub(crate) struct Started {
    /// The run id, sent once the ledger has the run (dropped unsent when the import ended
    /// before that: a lock held, a file that cannot be read).
    pub run_id: oneshot::Receiver<i64>,
    /// How it ended.
    pub done: oneshot::Receiver<Finished>,
}

/// The end of an import.
pub(crate) struct Finished {
    /// Its ledger id, when it got that far.
    pub run_id: Option<i64>,
    /// The report or the failure.
    pub result: Result<ImportReport, ImportFailure>,
    /// Where its rejects CSV can be downloaded, when it has one.
    pub rejects_href: Option<String>,
}

/// `GET /imports/{id}`: one import, live or from the ledger.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ImportView {
    pub id: i64,
    /// running, succeeded, rejected_rows, failed, cancelled, skipped, died (the ledger's names).
    pub status: String,
    pub table: String,
    pub method: String,
    pub file: String,
    pub rows: RowsView,
    /// The contract's stats object, once the import ended with them.
    pub stats: Option<serde_json::Value>,
    pub error: Option<String>,
    pub rejects_href: Option<String>,
    /// The first rejected rows (known while the service that ran the import is up).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rejects: Option<Vec<RejectView>>,
    /// All rejected rows, of which `rejects` are the first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rejected_total: Option<u64>,
}

/// Rows read, written and rejected so far. Of a run this process did not see end without
/// its stats (it died, or failed before them), only `written` is known, from the chunk
/// ledger: `read` and `rejected` are then null.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct RowsView {
    pub read: Option<u64>,
    pub written: u64,
    pub rejected: Option<u64>,
}

impl From<RowsSoFar> for RowsView {
    fn from(rows: RowsSoFar) -> Self {
        RowsView {
            read: Some(rows.read),
            written: rows.written,
            rejected: Some(rows.rejected),
        }
    }
}

impl From<&ImportStats> for RowsView {
    fn from(stats: &ImportStats) -> Self {
        RowsView {
            read: Some(stats.total_records),
            written: stats.success_count,
            rejected: Some(stats.error_count),
        }
    }
}

/// One rejected row in a response.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct RejectView {
    pub row_number: u64,
    pub column: Option<String>,
    pub reason: String,
}

impl From<&RejectedRow> for RejectView {
    fn from(row: &RejectedRow) -> Self {
        RejectView {
            row_number: u64::from(row.row_number),
            column: row.column.clone(),
            reason: row.reason.clone(),
        }
    }
}

impl Imports {
    /// No imports yet; `cancel` stops the running ones (at the end of the shutdown grace).
    pub fn new(
        max_concurrent: usize,
        uploads: PathBuf,
        retention: Retention,
        metrics: Arc<Metrics>,
        cancel: CancellationToken,
    ) -> Self {
        Imports {
            tracker: TaskTracker::new(),
            permits: Arc::new(Semaphore::new(max_concurrent)),
            max_concurrent,
            cancel,
            live: Arc::new(Mutex::new(BTreeMap::new())),
            uploads,
            retention,
            metrics,
        }
    }

    /// The tracker every import task runs in (shutdown closes it and waits).
    pub fn tracker(&self) -> &TaskTracker {
        &self.tracker
    }

    /// A place for one more import, or 429 when `--max-concurrent-imports` are running.
    pub fn try_permit(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        if self.cancel.is_cancelled() || self.tracker.is_closed() {
            return Err(ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "the service is shutting down; retry on the next instance",
            ));
        }
        Arc::clone(&self.permits).try_acquire_owned().map_err(|_| {
            ApiError::new(
                axum::http::StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "too many imports at once ({} running, --max-concurrent-imports); retry in a few seconds",
                    self.max_concurrent
                ),
            )
        })
    }

    /// Starts importing `upload` with `options` in a tracked task holding `permit`.
    pub fn start(
        &self,
        permit: OwnedSemaphorePermit,
        upload: Upload,
        options: ImportOptions,
    ) -> Started {
        self.start_running(permit, upload, options, import::run)
    }

    /// [`Imports::start`] with the import itself given: `run(options, control)`. A panic in
    /// it ends the import as an internal failure, like any other: the entry ends, the
    /// metrics count it, the partial rejects file goes.
    fn start_running<Run, Running>(
        &self,
        permit: OwnedSemaphorePermit,
        upload: Upload,
        mut options: ImportOptions,
        run: Run,
    ) -> Started
    where
        Run: FnOnce(ImportOptions, ImportControl) -> Running,
        Running: Future<Output = Result<ImportReport, ImportFailure>> + Send + 'static,
    {
        let (run_id_sender, run_id) = oneshot::channel();
        let (done_sender, done) = oneshot::channel();
        let entry = Arc::new(LiveImport {
            table: options.table.clone().unwrap_or_default(),
            method: options.method.name().to_string(),
            file: upload.display_name.clone(),
            rows: Mutex::new(RowsSoFar::default()),
            ended: Mutex::new(None),
        });
        let progress = Arc::new(Progress {
            live: Arc::clone(&self.live),
            entry: Arc::clone(&entry),
            run_id: Mutex::new(Some(run_id_sender)),
            recorded: Mutex::new(None),
        });
        // deleted when dropped, however the task ends, unless kept as the run's rejects
        let rejects_partial = TempPath::try_from_path(
            upload
                .path
                .with_file_name(format!(".rejects-{}.csv", uuid::Uuid::new_v4().simple())),
        )
        .expect("beside the upload, whose path is absolute: nothing to resolve");
        options.file = upload.path.to_path_buf();
        options.display_name = Some(upload.display_name.clone());
        options.rejects = Some(rejects_partial.to_path_buf());
        let control = ImportControl {
            progress: Some(Arc::clone(&progress) as Arc<dyn ProgressSink>),
            ..ImportControl::new()
        };
        let handle = control.clone();
        let running = run(options, control);
        let shutdown = self.cancel.clone();
        let live = Arc::clone(&self.live);
        let metrics = Arc::clone(&self.metrics);
        let uploads = self.uploads.clone();
        let retention = self.retention;
        let tracker = self.tracker.clone();
        let in_flight = self.metrics.started();
        info!(file = %upload.display_name, bytes = upload.bytes, table = %entry.table, method = %entry.method, "import of an upload started");
        self.tracker.spawn(async move {
            let started = Instant::now();
            // a task of its own, so that a panic in it comes back here as a JoinError
            let joined = tracker
                .spawn(run_until_shutdown(running, handle, shutdown))
                .await;
            let result = match joined {
                Ok(result) => result,
                Err(error) => Err(panicked(&error, *lock(&progress.recorded))),
            };
            // the upload is deleted here, before anything else can fail
            drop(upload);
            let run_id = match &result {
                Ok(report) => report.run_id,
                Err(failure) => failure.run_id,
            };
            if let Err(failure) = &result {
                // the answer may say less (see client_message): the details are here
                warn!(run_id, kind = ?failure.kind, error = %failure, "import of an upload failed");
            }
            let ended = ended_of(&result);
            let rejects_href = keep_rejects(
                &uploads,
                rejects_partial,
                run_id,
                ended.rejected_total,
                retention,
            )
            .await;
            let (written, rejected) = ended
                .stats
                .as_ref()
                .map_or((0, 0), |stats| (stats.success_count, stats.error_count));
            metrics.finished(
                ended.status,
                written,
                rejected,
                started.elapsed().as_secs_f64(),
            );
            drop(in_flight);
            info!(
                run_id,
                status = ended.status,
                written,
                rejected,
                "import of an upload ended"
            );
            *lock(&entry.ended) = Some(ended);
            forget_oldest_ended(&live);
            drop(permit);
            // nobody waits any more when the request was answered with 202 (or the client left)
            let _unwaited = done_sender.send(Finished {
                run_id,
                result,
                rejects_href,
            });
        });
        Started { run_id, done }
    }

    /// The import `id` as this process knows it, if it does.
    pub fn view(&self, id: i64) -> Option<ImportView> {
        let entry = lock(&self.live).get(&id).cloned()?;
        Some(view_of(id, &entry, rejects_href(&self.uploads, id)))
    }

    /// A ledger entry as the view, with live details when this process ran it, else with
    /// what the chunk ledger says of it (`chunks`): the rows in the table, and `died` for a
    /// run still `running` whose process is gone.
    pub fn view_of_entry(&self, entry: &RunEntry, chunks: Option<&RunRows>) -> ImportView {
        if let Some(view) = self.view(entry.id) {
            return view;
        }
        let stats = entry.stats.clone();
        let count = |field: &str| {
            stats
                .as_ref()
                .and_then(|stats| stats.get(field))
                .and_then(serde_json::Value::as_u64)
        };
        let rows = RowsView {
            read: count("total_records"),
            // the chunk ledger has every commit of the run, also of one that never finished
            written: chunks.map_or_else(
                || count("success_count").unwrap_or_default(),
                |chunks| chunks.written,
            ),
            rejected: count("error_count"),
        };
        let (status, error) = match chunks {
            Some(chunks) if chunks.dead => (
                RunOutcome::Died.name().to_string(),
                Some(DIED_MESSAGE.to_string()),
            ),
            _ => (entry.outcome.clone(), entry.error.clone()),
        };
        let file = stats
            .as_ref()
            .and_then(|stats| stats.get("file"))
            .and_then(serde_json::Value::as_str)
            .map_or_else(
                || {
                    Path::new(&entry.file_path)
                        .file_name()
                        .map(|name| name.to_string_lossy().into_owned())
                        .unwrap_or_default()
                },
                str::to_string,
            );
        ImportView {
            id: entry.id,
            status,
            table: entry.table.clone(),
            method: entry.method.clone(),
            file,
            rows,
            stats,
            error,
            rejects_href: rejects_href(&self.uploads, entry.id),
            rejects: None,
            rejected_total: None,
        }
    }

    /// The kept rejects CSV of import `id`.
    pub fn rejects_path(&self, id: i64) -> Option<PathBuf> {
        let path = rejects_file(&self.uploads, id);
        path.is_file().then_some(path)
    }

    /// Imports running now.
    pub fn running_count(&self) -> usize {
        self.max_concurrent - self.permits.available_permits()
    }
}

/// The failure of an import whose task panicked (recorded as `run_id`, when it got that far).
fn panicked(error: &tokio::task::JoinError, run_id: Option<i64>) -> ImportFailure {
    let error = match error.is_panic() {
        true => anyhow::anyhow!("the import panicked (a bug in importer)"),
        false => anyhow::anyhow!("the import task was cancelled"),
    };
    ImportFailure {
        kind: FailureKind::Internal,
        error,
        stats: None,
        run_id,
    }
}

/// Runs one import; when the shutdown grace is over, cancels it naming the shutdown (the
/// ledger then says `stopped by the service's shutdown`).
async fn run_until_shutdown(
    running: impl Future<Output = Result<ImportReport, ImportFailure>>,
    handle: ImportControl,
    shutdown: CancellationToken,
) -> Result<ImportReport, ImportFailure> {
    tokio::pin!(running);
    tokio::select! {
        result = &mut running => return result,
        () = shutdown.cancelled() => handle.cancel_because("the service's shutdown"),
    }
    running.await
}

/// The progress sink of one import: registers it under its run id once the ledger has it.
struct Progress {
    live: Arc<Mutex<BTreeMap<i64, Arc<LiveImport>>>>,
    entry: Arc<LiveImport>,
    run_id: Mutex<Option<oneshot::Sender<i64>>>,
    /// The run id, once the ledger has it (for a failure that loses the report).
    recorded: Mutex<Option<i64>>,
}

impl ProgressSink for Progress {
    fn started(&self, run_id: Option<i64>) {
        let Some(run_id) = run_id else {
            return;
        };
        lock(&self.live).insert(run_id, Arc::clone(&self.entry));
        *lock(&self.recorded) = Some(run_id);
        if let Some(sender) = lock(&self.run_id).take() {
            // the handler may be gone (the client left): the import goes on regardless
            let _unwaited = sender.send(run_id);
        }
    }

    fn rows(&self, rows: RowsSoFar) {
        *lock(&self.entry.rows) = rows;
    }
}

/// The ledger's name of how an import ended.
pub(crate) fn status_of(result: &Result<ImportReport, ImportFailure>) -> &'static str {
    match result {
        Ok(report) => match report.outcome {
            ImportOutcome::AllIn => "succeeded",
            ImportOutcome::SomeRejected => "rejected_rows",
            ImportOutcome::Cancelled => "cancelled",
            ImportOutcome::Skipped => "skipped",
        },
        Err(_) => "failed",
    }
}

fn ended_of(result: &Result<ImportReport, ImportFailure>) -> Ended {
    match result {
        Ok(report) => Ended {
            status: status_of(result),
            stats: Some(report.stats.clone()),
            error: None,
            rejects: report.rejections.clone(),
            rejected_total: report.rejected_total,
        },
        Err(failure) => Ended {
            status: status_of(result),
            stats: failure.stats.clone(),
            error: Some(client_message(failure)),
            rejects: Vec::new(),
            rejected_total: failure.stats.as_ref().map_or(0, |stats| stats.error_count),
        },
    }
}

fn view_of(id: i64, entry: &LiveImport, rejects_href: Option<String>) -> ImportView {
    let ended = lock(&entry.ended).clone();
    let rows = *lock(&entry.rows);
    match ended {
        None => ImportView {
            id,
            status: "running".to_string(),
            table: entry.table.clone(),
            method: entry.method.clone(),
            file: entry.file.clone(),
            rows: RowsView::from(rows),
            stats: None,
            error: None,
            rejects_href: None,
            rejects: None,
            rejected_total: None,
        },
        Some(ended) => ImportView {
            id,
            status: ended.status.to_string(),
            table: ended
                .stats
                .as_ref()
                .map_or_else(|| entry.table.clone(), |stats| stats.table.clone()),
            method: entry.method.clone(),
            file: entry.file.clone(),
            rows: ended
                .stats
                .as_ref()
                .map_or(RowsView::from(rows), RowsView::from),
            stats: ended
                .stats
                .as_ref()
                .and_then(|stats| serde_json::to_value(stats).ok()),
            error: ended.error,
            rejects_href,
            rejects: Some(ended.rejects.iter().map(RejectView::from).collect()),
            rejected_total: Some(ended.rejected_total),
        },
    }
}

/// Drops the oldest ended imports beyond [`ENDED_KEPT`] (the ledger still has them).
fn forget_oldest_ended(live: &Mutex<BTreeMap<i64, Arc<LiveImport>>>) {
    let mut live = lock(live);
    let ended: Vec<i64> = live
        .iter()
        .filter(|(_, entry)| lock(&entry.ended).is_some())
        .map(|(id, _)| *id)
        .collect();
    for id in ended.iter().take(ended.len().saturating_sub(ENDED_KEPT)) {
        live.remove(id);
    }
}

fn rejects_file(uploads: &Path, id: i64) -> PathBuf {
    uploads.join(format!("rejects-{id}.csv"))
}

/// `/imports/ID/rejects.csv` when that file is kept.
fn rejects_href(uploads: &Path, id: i64) -> Option<String> {
    rejects_file(uploads, id)
        .is_file()
        .then(|| format!("/imports/{id}/rejects.csv"))
}

/// Keeps the rejects CSV of an import that rejected rows as `rejects-ID.csv` (else deletes
/// it), then prunes the kept ones; returns its download path.
async fn keep_rejects(
    uploads: &Path,
    partial: TempPath,
    run_id: Option<i64>,
    rejected_total: u64,
    retention: Retention,
) -> Option<String> {
    let uploads = uploads.to_path_buf();
    let kept = tokio::task::spawn_blocking(move || {
        let kept = match run_id {
            Some(id) if rejected_total > 0 && partial.is_file() => {
                let target = rejects_file(&uploads, id);
                match partial.persist(&target) {
                    Ok(()) => Some(format!("/imports/{id}/rejects.csv")),
                    Err(error) => {
                        warn!(error = %error.error, "cannot keep the rejects file");
                        close_partial(error.path);
                        None
                    }
                }
            }
            _ => {
                close_partial(partial);
                None
            }
        };
        prune_rejects(&uploads, retention);
        kept
    })
    .await;
    kept.unwrap_or_else(|_| {
        warn!("the rejects file keeper panicked");
        None
    })
}

/// Deletes a rejects file that is not kept (it may never have been written).
fn close_partial(partial: TempPath) {
    let exists = partial.exists();
    if let Err(error) = partial.close()
        && exists
    {
        warn!(error = %error, "cannot delete a rejects file");
    }
}

/// Deletes the kept rejects files beyond the newest `retention.count` or older than
/// `retention.age`.
pub(crate) fn prune_rejects(uploads: &Path, retention: Retention) {
    let Ok(entries) = std::fs::read_dir(uploads) else {
        return;
    };
    let mut kept: Vec<(SystemTime, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter(|entry| {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            name.starts_with("rejects-") && name.ends_with(".csv")
        })
        .filter_map(|entry| {
            let modified = entry.metadata().ok()?.modified().ok()?;
            Some((modified, entry.path()))
        })
        .collect();
    kept.sort_by_key(|(modified, _)| std::cmp::Reverse(*modified));
    let now = SystemTime::now();
    for (index, (modified, path)) in kept.iter().enumerate() {
        let too_old = now
            .duration_since(*modified)
            .is_ok_and(|age| age > retention.age);
        if (index >= retention.count || too_old)
            && let Err(error) = std::fs::remove_file(path)
        {
            warn!(error = %error, file = %path.display(), "cannot delete an old rejects file");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panicking_import_fails_as_internal_and_leaves_no_file_nor_count_behind() {
        let uploads =
            std::env::temp_dir().join(format!("importer-panic-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&uploads).expect("the test directory is created");
        let metrics = Arc::new(Metrics::new());
        let retention = Retention {
            count: 10,
            age: Duration::from_secs(3600),
        };
        let imports = Imports::new(
            1,
            uploads.clone(),
            retention,
            Arc::clone(&metrics),
            CancellationToken::new(),
        );
        let file = uploads.join("upload-1.csv");
        std::fs::write(&file, "name\nada\n").expect("the upload is written");
        let upload = Upload {
            path: TempPath::try_from_path(file).expect("an absolute path"),
            display_name: "people.csv".to_string(),
            bytes: 9,
        };
        let permit = imports.try_permit().expect("a place is free");
        let options = ImportOptions::new(PathBuf::new(), "postgres://nowhere");
        // recorded, a rejected row written, then a bug
        let started =
            imports.start_running(permit, upload, options, |options, control| async move {
                if let Some(progress) = &control.progress {
                    progress.started(Some(41));
                }
                let rejects = options.rejects.expect("the service asks for rejects");
                std::fs::write(rejects, "row_number,column,reason,name\n2,name,bad,ada\n")
                    .expect("the rejects are written");
                panic!("a bug in the import");
            });
        let finished = started.done.await.expect("the task answers");
        let failure = finished.result.expect_err("a panic is a failure");
        assert_eq!(failure.kind, FailureKind::Internal, "{failure}");
        assert_eq!(finished.run_id, Some(41));
        let view = imports.view(41).expect("the import is known");
        assert_eq!(view.status, "failed");
        let text = metrics.render().expect("metrics render");
        assert!(text.contains("importer_imports_in_flight 0"), "{text}");
        assert!(
            text.contains(r#"importer_imports_total{outcome="failed"} 1"#),
            "{text}"
        );
        imports.tracker().close();
        imports.tracker().wait().await;
        let left: Vec<_> = std::fs::read_dir(&uploads)
            .expect("the directory reads")
            .filter_map(Result::ok)
            .map(|entry| entry.file_name())
            .collect();
        assert!(left.is_empty(), "{left:?}");
        std::fs::remove_dir_all(&uploads).ok();
    }
}
