//! What an import keeps beside the import for unattended use: the table's run lock, the
//! run's row in the ledger, `--skip-unchanged`, and the `--summary` file.
//!
//! [`check_outputs`] runs first of all: an output path that cannot be written fails the run
//! before anything is locked, recorded or written. [`RunRecord::begin`] is called once the
//! table's name is known and before anything is written: it takes the lock, marks earlier
//! runs whose process is gone as `died` (dropping their staging tables), and either records
//! a skipped run or inserts the run as `running` (or, stopped by a signal while it waited for
//! the lock, as `cancelled`), warns when an append loads content a finished run already
//! loaded, and finds what earlier unfinished runs of the same content left in the table, so
//! that the run resumes after it (by default in append mode; see [`Resume`]). [`RunRecord::keep_stats`] records the outcome and stats just
//! before the stats are printed (a process killed after printing them leaves no `running`
//! row), and [`RunRecord::finish`] with whatever the import returned, so that every ending
//! after the start (success, rejected rows, an error, --max-errors, a signal) reaches the
//! ledger. An output that fails after the rows are committed fails the run, but the ledger
//! keeps the outcome of its rows ([`RunRecord::keep_rows_outcome`]), so that a later
//! `--skip-unchanged` knows they are in. The lock is released only after that, so a waiting
//! run's `--skip-unchanged` sees the outcome. `--dry-run` takes no lock and writes no ledger;
//! `--no-ledger` takes the lock and writes no ledger. Orchestration only: the SQL is in
//! `sink::lock` and `sink::ledger`.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use sqlx::PgPool;
use tracing::{debug, info, warn};

use super::control::ImportControl;
use super::mode::{Mode, WritePlan};
use super::options::{ImportOptions, Resume};
use super::prepare::Prepared;
use super::report::{Failing, FailureKind, ImportOutcome, SkippedRun};
use crate::job::ImportJob;
use crate::sink::TableName;
use crate::sink::chunks::{self, ChunkLedger, CommittedRows, Fence};
use crate::sink::ledger::{self, Ledger, RunOutcome, RunStart};
use crate::sink::lock::{self, TableLock};
use crate::sink::staging;
use crate::source::is_stdin;
use crate::stats::ImportStats;

/// The bookkeeping of one import.
pub struct RunRecord {
    summary: Option<PathBuf>,
    /// The run ledger; `None` with `--no-ledger` or `--dry-run`.
    ledger: Option<Ledger>,
    lock: Option<TableLock>,
    /// The ledger's pool and the run's id, once the run is recorded as running.
    entry: Option<(PgPool, i64)>,
    /// The run's hold on its table, once it took the table's fencing token.
    fence: Option<Fence>,
    stats: Option<ImportStats>,
    /// How the rows ended, when the run fails only after they are committed.
    rows_outcome: Option<ImportOutcome>,
    /// Resuming: the rows earlier runs of the same content put in the table.
    already_in: Option<Arc<CommittedRows>>,
    /// `skip_unchanged` found the content loaded before.
    skipped: Option<SkippedRun>,
    /// What a re-run of the same command does with the rows this run leaves in the table.
    rerun: Rerun,
}

/// What a re-run of the same command does with the rows an unfinished run left in the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rerun {
    /// Nothing is left behind: a dry run, or a staged run whose rows are discarded.
    NothingLeft,
    /// It resumes after them.
    Resumes,
    /// It writes every row again; the hint says how to resume instead (or why it cannot).
    WritesAgain(&'static str),
}

impl Rerun {
    /// What a re-run of `options` does.
    fn of(options: &ImportOptions) -> Self {
        if options.dry_run || options.mode == Mode::Replace || options.atomic {
            Rerun::NothingLeft
        } else if options.ledger_schema.is_none() {
            Rerun::WritesAgain("--no-ledger keeps no record to resume from")
        } else if resumes(options) {
            Rerun::Resumes
        } else if options.resume == Resume::Never {
            Rerun::WritesAgain("without --no-resume it resumes after them")
        } else {
            Rerun::WritesAgain("with --resume it resumes after them")
        }
    }
}

/// Whether a run of `options` resumes after what earlier unfinished runs of its content left
/// in the table: by default in append mode, with `--resume` (or `--skip-unchanged`) in
/// upsert mode too; never in a staged mode.
fn resumes(options: &ImportOptions) -> bool {
    let staged = options.mode == Mode::Replace || options.atomic;
    let asked = match options.resume {
        Resume::Auto => options.mode == Mode::Append,
        Resume::Always => true,
        Resume::Never => false,
    };
    !staged && (asked || options.skip_unchanged)
}

/// Refuses resume settings that cannot work with the other options (the CLI refuses them
/// as usage errors before this; a library caller gets a [`FailureKind::Usage`] failure).
fn check_resume(options: &ImportOptions) -> anyhow::Result<()> {
    let staged = options.mode == Mode::Replace || options.atomic;
    let refusal = match options.resume {
        Resume::Always if staged => Some(
            "--resume cannot be combined with --atomic or --mode replace: those runs leave no rows behind to resume from",
        ),
        Resume::Always if options.dry_run => {
            Some("--resume cannot be combined with --dry-run, which writes nothing")
        }
        Resume::Always if options.ledger_schema.is_none() => Some(
            "--resume cannot be combined with --no-ledger: what earlier runs committed is read from the run ledger",
        ),
        Resume::Never if options.skip_unchanged => Some(
            "--no-resume cannot be combined with --skip-unchanged, which resumes content an earlier run loaded in part",
        ),
        Resume::Auto | Resume::Always | Resume::Never => None,
    };
    match refusal {
        Some(refusal) => Err(anyhow::anyhow!(refusal)).failing_as(FailureKind::Usage),
        None => Ok(()),
    }
}

impl RunRecord {
    /// Nothing held or recorded yet.
    pub fn new(options: &ImportOptions) -> Self {
        let ledger = match options.dry_run {
            true => None,
            false => options.ledger_schema.as_deref().map(Ledger::new),
        };
        RunRecord {
            summary: options.summary.clone(),
            ledger,
            lock: None,
            entry: None,
            fence: None,
            stats: None,
            rows_outcome: None,
            already_in: None,
            skipped: None,
            rerun: Rerun::of(options),
        }
    }

    /// Takes the table's run lock, then with `skip_unchanged` returns `Some(Skipped)` when
    /// the file's content was already loaded into the table (recording a skipped run and
    /// keeping the skip report), else records the run as started. A cancel while the file is
    /// hashed or the lock awaited returns `Some(Cancelled)`, the run recorded as cancelled
    /// when its file is known; the caller keeps the (empty) stats.
    pub async fn begin(
        &mut self,
        options: &ImportOptions,
        prepared: &Prepared,
        control: &ImportControl,
    ) -> anyhow::Result<Option<ImportOutcome>> {
        check_resume(options)?;
        if options.dry_run {
            return Ok(None);
        }
        let Some(ledger) = self.ledger.clone() else {
            // --no-ledger: the lock still keeps two runs off the same table
            let acquiring =
                TableLock::acquire(&prepared.pool, &prepared.table_name, options.wait_lock);
            return Ok(match control.unless_cancelled(acquiring).await? {
                ControlFlow::Continue(lock) => {
                    self.lock = Some(lock);
                    None
                }
                ControlFlow::Break(()) => Some(ImportOutcome::Cancelled),
            });
        };
        let fingerprinting = ledger::fingerprint(&prepared.source.path);
        let mut file = match control
            .unless_cancelled(fingerprinting)
            .await
            .failing_as(FailureKind::Input)?
        {
            ControlFlow::Continue(file) => file,
            ControlFlow::Break(()) => return Ok(Some(ImportOutcome::Cancelled)),
        };
        if is_stdin(&options.file) {
            // the spooled copy's path means nothing once the run is over
            file.path = options.file.display().to_string();
        } else if let Some(name) = &options.display_name {
            // a service's upload lives under a temporary name: the ledger keeps the client's
            file.path = name.clone();
        }
        let acquiring = TableLock::acquire(&prepared.pool, &prepared.table_name, options.wait_lock);
        let mut lock = match control.unless_cancelled(acquiring).await? {
            ControlFlow::Continue(lock) => lock,
            ControlFlow::Break(()) => {
                // stopped while queued for the lock: the pool is open, so the run is recorded
                // as cancelled (it held nothing and wrote nothing)
                let table = lock::qualify_table(&prepared.pool, &prepared.table_name).await?;
                ledger::create_ledger(&prepared.pool, &ledger).await?;
                let start = RunStart {
                    file: &file,
                    sheet: &prepared.header.sheet_name,
                    table: &table,
                    method: options.method.name(),
                    mode: options.mode.name(),
                };
                let run_id = ledger::insert_run(
                    &prepared.pool,
                    &ledger,
                    &start,
                    RunOutcome::Cancelled,
                    None,
                )
                .await?;
                self.entry = Some((prepared.pool.clone(), run_id));
                return Ok(Some(ImportOutcome::Cancelled));
            }
        };
        let table = lock.table().clone();
        let (lock_key, lock_pid) = (lock.key(), lock.backend_pid().await?);
        self.lock = Some(lock);
        ledger::create_ledger(&prepared.pool, &ledger).await?;
        bury_dead_runs(&prepared.pool, &ledger, &table).await?;
        let start = RunStart {
            file: &file,
            sheet: &prepared.header.sheet_name,
            table: &table,
            method: options.method.name(),
            mode: options.mode.name(),
        };
        // append loads a content already in once more: worth a warning; other modes rewrite
        let previous = match options.skip_unchanged || options.mode == Mode::Append {
            true => ledger::previous_load(&prepared.pool, &ledger, &table, &file.sha256).await?,
            false => None,
        };
        if let Some(previous) = previous.as_ref().filter(|_| options.skip_unchanged) {
            let run_id = ledger::insert_run(
                &prepared.pool,
                &ledger,
                &start,
                RunOutcome::Skipped,
                Some(previous.run_id),
            )
            .await?;
            info!(
                table = %table,
                sha256 = %file.sha256,
                previous_run_id = previous.run_id,
                run_id,
                "skipped: this content is already in the table"
            );
            let report = SkippedRun {
                skipped: true,
                file: options.file_name(),
                table: prepared.table_name.to_string(),
                sha256: file.sha256.clone(),
                previous_run_id: previous.run_id,
                run_id,
                previous_finished_at: previous.finished_at.clone(),
                qualified_table: table.to_string(),
            };
            self.write_summary(serde_json::to_string(&report)?).await?;
            self.skipped = Some(report);
            return Ok(Some(ImportOutcome::Skipped));
        }
        let run_id =
            ledger::insert_run(&prepared.pool, &ledger, &start, RunOutcome::Running, None).await?;
        let fence =
            chunks::take_fence(&prepared.pool, &ledger, run_id, &table, lock_key, lock_pid).await?;
        self.fence = Some(fence);
        if let Some(previous) = &previous {
            warn!(
                table = %table,
                previous_run_id = previous.run_id,
                "this content was already loaded into table {table} by run {} at {}; loading it again (--skip-unchanged skips it)",
                previous.run_id,
                previous.finished_at
            );
        }
        if resumes(options) {
            let hint = match options.resume == Resume::Auto && !options.skip_unchanged {
                true => "; --no-resume loads every row again",
                false => "",
            };
            self.resume(
                &prepared.pool,
                &ledger,
                run_id,
                &table,
                (&file.sha256, &prepared.header.sheet_name),
                hint,
            )
            .await?;
        }
        debug!(table = %table, run_id, sha256 = %file.sha256, "run started in the ledger");
        self.entry = Some((prepared.pool.clone(), run_id));
        Ok(None)
    }

    /// Tells the job where its writers record their chunks (nothing unless the run is
    /// recorded as running: not for `--dry-run` or a skipped run) and, when resuming, which
    /// rows are already in.
    pub fn attach_to(&self, job: &mut ImportJob, connect_timeout: Duration) {
        job.chunk_ledger = match (&self.entry, &self.ledger, self.fence) {
            (Some((_, run_id)), Some(ledger), Some(fence)) => Some(ChunkLedger {
                run_id: *run_id,
                ledger: ledger.clone(),
                fence,
                connect_timeout,
            }),
            _ => None,
        };
        job.already_in = self.already_in.clone();
    }

    /// Resumes run `run_id` after what earlier unfinished runs of the same content (SHA-256
    /// and sheet) put in `table` (see `sink::chunks::committed_rows`), if they put anything,
    /// saying so in one line that ends in `hint`.
    async fn resume(
        &mut self,
        pool: &PgPool,
        ledger: &Ledger,
        run_id: i64,
        table: &TableName,
        (sha256, sheet): (&str, &str),
        hint: &str,
    ) -> anyhow::Result<()> {
        let done = chunks::committed_rows(pool, ledger, table, sha256, sheet).await?;
        let Some(&resumed_run_id) = done.run_ids().last() else {
            return Ok(());
        };
        chunks::record_resumed(pool, ledger, run_id, resumed_run_id).await?;
        let from_runs = match done.run_ids() {
            [_] => String::new(),
            run_ids => {
                let run_ids: Vec<String> = run_ids.iter().map(i64::to_string).collect();
                format!(" (from runs {})", run_ids.join(", "))
            }
        };
        info!(
            table = %table,
            previous_run_id = resumed_run_id,
            row_count = done.row_count(),
            "resuming run {resumed_run_id}: {} rows of this content are already in table {table}{from_runs} and are skipped{hint}",
            done.row_count()
        );
        self.already_in = Some(Arc::new(done));
        Ok(())
    }

    /// What a re-run of the same command does with the rows this run (`success_count` of
    /// them) and the runs it resumed left in the table, for the warning of an interrupted
    /// run; `None` when nothing is left behind.
    pub fn rerun_note(&self, success_count: u64) -> Option<String> {
        let already_in = self.already_in.as_ref().map_or(0, |rows| rows.row_count());
        let rows_in = success_count + already_in;
        match self.rerun {
            _ if rows_in == 0 => None,
            Rerun::NothingLeft => None,
            Rerun::Resumes => Some(format!(
                "a re-run of the same command resumes after the {rows_in} rows of this content already in the table"
            )),
            Rerun::WritesAgain(hint) => Some(format!(
                "a re-run of the same command writes all its rows again ({hint})"
            )),
        }
    }

    /// Gives up recording this run: the server could not be reached again after the
    /// connection was lost, and each ledger write would only wait for it in vain. The run stays
    /// `running` until the next run on the table records it as `died`.
    pub fn forget_server(&mut self) {
        if let Some((_, run_id)) = self.entry.take() {
            warn!(
                run_id,
                "the server is out of reach: the run stays running in the ledger until the next run on the table records it as died"
            );
        }
    }

    /// Keeps the staging table of `plan` in the run's ledger row, so that the next run on the
    /// table drops it should this one die.
    pub async fn keep_staging(&self, plan: &WritePlan) -> anyhow::Result<()> {
        let (
            Some((pool, run_id)),
            Some(ledger),
            WritePlan::Replace { staging, .. } | WritePlan::Publish { staging, .. },
        ) = (&self.entry, &self.ledger, plan)
        else {
            return Ok(());
        };
        chunks::record_staging(pool, ledger, *run_id, staging).await
    }

    /// Records the stats and the outcome they stand for in the ledger, and writes them to
    /// `--summary`: called just before they are printed, so that a process killed right after
    /// printing them leaves its outcome behind (a later `--skip-unchanged` sees it), and the
    /// file exists whenever stdout has the stats (early stops included). [`RunRecord::finish`]
    /// records the final word, with the error line.
    pub async fn keep_stats(
        &mut self,
        stats: &ImportStats,
        outcome: RunOutcome,
    ) -> anyhow::Result<()> {
        self.stats = Some(stats.clone());
        if let (Some((pool, run_id)), Some(ledger)) = (&self.entry, &self.ledger)
            && let Err(error) =
                ledger::finish_run(pool, ledger, *run_id, outcome, Some(stats), None).await
        {
            // the stats still print; `finish` records the outcome again and fails if it cannot
            warn!(error = %format!("{error:#}"), "cannot record the outcome before printing the stats");
        }
        self.write_summary(serde_json::to_string(stats)?).await
    }

    /// The run's ledger id, once recorded (for a skipped run, the skipped run's).
    pub fn run_id(&self) -> Option<i64> {
        self.entry
            .as_ref()
            .map(|(_, run_id)| *run_id)
            .or(self.skipped.as_ref().map(|skipped| skipped.run_id))
    }

    /// The stats kept so far.
    pub fn stats(&self) -> Option<&ImportStats> {
        self.stats.as_ref()
    }

    /// What `skip_unchanged` found, when it skipped the run.
    pub fn skipped(&self) -> Option<&SkippedRun> {
        self.skipped.as_ref()
    }

    /// Keeps how the run's rows ended (committed: all in, some rejected, or cancelled) for a
    /// run that then fails on an output file: the ledger records that outcome beside the
    /// error, since the rows are in the table whatever the exit code says.
    pub fn keep_rows_outcome(&mut self, outcome: ImportOutcome) {
        self.rows_outcome = Some(outcome);
    }

    /// Records how the run ended in the ledger, releases the lock, and returns `result`. A
    /// run that succeeded but cannot be recorded fails: the next `--skip-unchanged` would not
    /// know its content is in. `cause` names what cancelled a cancelled run.
    pub async fn finish(
        self,
        result: anyhow::Result<ImportOutcome>,
        cause: &str,
    ) -> anyhow::Result<ImportOutcome> {
        let recorded = match (&self.entry, &self.ledger) {
            (Some((pool, run_id)), Some(ledger)) => {
                let (outcome, error) = match (&result, self.rows_outcome) {
                    (Ok(outcome), _) => (ledger_outcome(*outcome), cancel_note(*outcome, cause)),
                    (Err(error), Some(rows_outcome)) => {
                        (ledger_outcome(rows_outcome), Some(format!("{error:#}")))
                    }
                    (Err(error), None) => (RunOutcome::Failed, Some(format!("{error:#}"))),
                };
                let recorded = ledger::finish_run(
                    pool,
                    ledger,
                    *run_id,
                    outcome,
                    self.stats.as_ref(),
                    error.as_deref(),
                )
                .await;
                if recorded.is_ok() {
                    info!(
                        run_id,
                        outcome = outcome.name(),
                        "run recorded in the ledger"
                    );
                }
                recorded
            }
            _ => Ok(()),
        };
        if let Some(lock) = self.lock {
            let table = lock.table().clone();
            // the server releases it anyway when the connection ends with the process
            if let Err(error) = lock.release().await {
                warn!(table = %table, error = %format!("{error:#}"), "cannot release the table's run lock");
            }
        }
        match (result, recorded) {
            (Ok(outcome), Ok(())) => Ok(outcome),
            (Ok(_), Err(error)) => {
                Err(error.context("the import ended but its outcome is not in the run ledger"))
            }
            (Err(error), Ok(())) => Err(error),
            (Err(error), Err(ledger_error)) => {
                warn!(error = %format!("{ledger_error:#}"), "cannot record the failed run in the ledger");
                Err(error)
            }
        }
    }

    /// Writes `json` to `--summary`, through a temporary file renamed into place so that a
    /// monitor never reads half a summary.
    async fn write_summary(&self, json: String) -> anyhow::Result<()> {
        let Some(path) = self.summary.clone() else {
            return Ok(());
        };
        tokio::task::spawn_blocking(move || {
            let cannot_write = || format!("cannot write the summary file {}", path.display());
            let temporary = summary_temporary(&path);
            let written = std::fs::write(&temporary, format!("{json}\n"))
                .and_then(|()| std::fs::rename(&temporary, &path));
            if written.is_err() {
                std::fs::remove_file(&temporary).ok(); // best effort: the error below is what counts
            }
            written.with_context(cannot_write)
        })
        .await
        .context("the summary writer panicked")?
    }
}

/// The ledger's outcome for how a run (or its rows) ended.
fn ledger_outcome(outcome: ImportOutcome) -> RunOutcome {
    match outcome {
        ImportOutcome::AllIn => RunOutcome::Succeeded,
        ImportOutcome::SomeRejected => RunOutcome::RejectedRows,
        ImportOutcome::Cancelled => RunOutcome::Cancelled,
        // never recorded through `finish`: the skipped run's row is written whole
        ImportOutcome::Skipped => RunOutcome::Skipped,
    }
}

/// The ledger's `error` of a run that ended without one: what cancelled it.
fn cancel_note(outcome: ImportOutcome, cause: &str) -> Option<String> {
    match outcome {
        ImportOutcome::Cancelled => Some(format!("stopped by {cause}")),
        ImportOutcome::AllIn | ImportOutcome::SomeRejected | ImportOutcome::Skipped => None,
    }
}

/// Checks that every output path can be written, before anything is locked, recorded or
/// written: a run that would load its rows and then fail on its summary is worse than one
/// that does not start. `--rejects` must be a file that can be created or written;
/// `--summary` is written beside its path and renamed into place, so a file is created and
/// removed there.
pub fn check_outputs(options: &ImportOptions) -> anyhow::Result<()> {
    if let Some(rejects) = &options.rejects {
        check_writable_file(rejects)
            .with_context(|| format!("--rejects {} cannot be written", rejects.display()))
            .failing_as(FailureKind::Usage)?;
    }
    if let Some(summary) = &options.summary {
        check_summary_path(summary)
            .with_context(|| format!("--summary {} cannot be written", summary.display()))
            .failing_as(FailureKind::Usage)?;
    }
    Ok(())
}

/// Marks `died` the earlier runs into `table` that are still `running` with their process
/// gone, and drops the staging tables they left. The caller holds the table's lock.
async fn bury_dead_runs(pool: &PgPool, ledger: &Ledger, table: &TableName) -> anyhow::Result<()> {
    for dead in chunks::bury_dead_runs(pool, ledger, table).await? {
        warn!(table = %table, run_id = dead.run_id, "an earlier run on this table ended without recording its outcome; recorded it as died");
        if let Some(staging) = &dead.staging {
            staging::discard(pool, staging).await?;
            info!(table = %table, staging = %staging, run_id = dead.run_id, "dropped the staging table the dead run left");
        }
    }
    Ok(())
}

/// Fails naming the directory `path` would be written in when that is missing or no
/// directory, which the error of opening the file would not say.
fn check_directory(path: &Path) -> anyhow::Result<()> {
    let Some(directory) = path
        .parent()
        .filter(|parent| !parent.as_os_str().is_empty())
    else {
        return Ok(());
    };
    match std::fs::metadata(directory) {
        Ok(metadata) if !metadata.is_dir() => bail!("{} is not a directory", directory.display()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => bail!(
            "the directory {} does not exist; create it first (mkdir -p {})",
            directory.display(),
            directory.display()
        ),
        // other failures show when the file is opened
        Ok(_) | Err(_) => Ok(()),
    }
}

fn check_writable_file(path: &Path) -> anyhow::Result<()> {
    if path.is_dir() {
        bail!("it is a directory");
    }
    check_directory(path)?;
    let existed = path.exists();
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)?;
    if !existed {
        // only a probe: the run creates the file when it starts writing rejects
        std::fs::remove_file(path)?;
    }
    Ok(())
}

fn check_summary_path(path: &Path) -> anyhow::Result<()> {
    if path.is_dir() {
        bail!("it is a directory");
    }
    check_directory(path)?;
    let temporary = summary_temporary(path);
    std::fs::write(&temporary, b"")?;
    std::fs::remove_file(&temporary)?;
    Ok(())
}

/// Where the summary is written before it is renamed into place.
fn summary_temporary(path: &Path) -> PathBuf {
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(format!(".{}.tmp", std::process::id()));
    PathBuf::from(temporary)
}
