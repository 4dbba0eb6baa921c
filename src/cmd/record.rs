//! What `importer run` keeps beside the import for unattended use (issue 4): the table's run
//! lock, the run's row in the ledger, `--skip-unchanged`, and the `--summary` file.
//!
//! [`RunRecord::begin`] is called once the table's name is known and before anything is
//! written: it takes the lock, and either records a skipped run or inserts the run as
//! `running`. [`RunRecord::keep_stats`] records the outcome and stats just before the stats
//! are printed (a process killed after printing them leaves no `running` row), and
//! [`RunRecord::finish`] with whatever the import returned, so that every ending after the
//! start (success, rejected rows, an error, --max-errors, a signal) reaches the ledger. The
//! lock is released only after that, so a waiting run's `--skip-unchanged` sees the outcome.
//! `--dry-run` takes no lock and writes no ledger. Orchestration only: the SQL is in
//! `sink::lock` and `sink::ledger`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Serialize;
use sqlx::PgPool;
use tracing::{debug, info, warn};

use super::Outcome;
use super::mode::WritePlan;
use super::run::Prepared;
use crate::cli::{Mode, OutputFormat, RunArgs};
use crate::job::ImportJob;
use crate::sink::TableName;
use crate::sink::chunks::{self, ChunkLedger, CommittedRows};
use crate::sink::ledger::{self, RunOutcome, RunStart};
use crate::sink::lock::TableLock;
use crate::sink::staging;
use crate::stats::{ImportStats, print_report};

/// The bookkeeping of one `importer run`.
pub struct RunRecord {
    summary: Option<PathBuf>,
    lock: Option<TableLock>,
    /// The ledger's pool and the run's id, once the run is recorded as running.
    entry: Option<(PgPool, i64)>,
    stats: Option<ImportStats>,
    /// Resuming: the rows earlier runs of the same content put in the table.
    already_in: Option<Arc<CommittedRows>>,
}

/// What `--skip-unchanged` prints, on stdout and in `--summary`, instead of the stats.
#[derive(Debug, Serialize)]
struct SkipReport<'a> {
    skipped: bool,
    file: &'a str,
    table: String,
    sha256: &'a str,
    /// The run that loaded this content.
    previous_run_id: i64,
    /// The ledger id of this (skipped) run.
    run_id: i64,
}

impl RunRecord {
    /// Nothing held or recorded yet.
    pub fn new(args: &RunArgs) -> Self {
        RunRecord {
            summary: args.summary.clone(),
            lock: None,
            entry: None,
            stats: None,
            already_in: None,
        }
    }

    /// Takes the table's run lock, then with `--skip-unchanged` returns `Some(AllIn)` when the
    /// file's content was already loaded into the table (recording a skipped run and printing
    /// the skip report), else records the run as started.
    pub async fn begin(
        &mut self,
        args: &RunArgs,
        prepared: &Prepared,
    ) -> anyhow::Result<Option<Outcome>> {
        if args.dry_run {
            return Ok(None);
        }
        let staged = args.mode == Mode::Replace || args.atomic;
        if args.resume && staged {
            bail!(
                "--resume cannot be combined with --atomic or --mode replace: those runs leave no rows behind to resume from"
            );
        }
        let file = ledger::fingerprint(&args.import.file).await?;
        let wait = args.wait_lock.map(Duration::from_secs);
        let mut lock = TableLock::acquire(&prepared.pool, &prepared.table_name, wait).await?;
        let table = lock.table().clone();
        let (lock_key, lock_pid) = (lock.key(), lock.backend_pid().await?);
        self.lock = Some(lock);
        ledger::create_ledger(&prepared.pool).await?;
        chunks::create_chunk_ledger(&prepared.pool).await?;
        bury_dead_runs(&prepared.pool, &table).await?;
        let start = RunStart {
            file: &file,
            sheet: &prepared.header.sheet_name,
            table: &table,
            method: args.method.name(),
            mode: args.mode.name(),
        };
        let previous = match args.skip_unchanged {
            true => ledger::previous_load(&prepared.pool, &table, &file.sha256).await?,
            false => None,
        };
        if let Some(previous) = previous {
            let run_id = ledger::insert_run(
                &prepared.pool,
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
            let report = SkipReport {
                skipped: true,
                file: &file_name(&args.import.file),
                table: prepared.table_name.to_string(),
                sha256: &file.sha256,
                previous_run_id: previous.run_id,
                run_id,
            };
            let json = serde_json::to_string(&report)?;
            let text = match args.format {
                OutputFormat::Text => format!(
                    "skipped: {} (sha256 {}) was already loaded into {table} by run {} at {}; nothing to do",
                    report.file, report.sha256, previous.run_id, previous.finished_at
                ),
                OutputFormat::Json => json.clone(),
            };
            print_report(&text);
            self.write_summary(json).await?;
            return Ok(Some(Outcome::AllIn));
        }
        let run_id = ledger::insert_run(&prepared.pool, &start, RunOutcome::Running, None).await?;
        chunks::take_fence(&prepared.pool, run_id, &table, lock_key, lock_pid).await?;
        if (args.resume || args.skip_unchanged) && !staged {
            self.resume(
                &prepared.pool,
                run_id,
                &table,
                &file.sha256,
                &prepared.header.sheet_name,
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
        job.chunk_ledger = self.entry.as_ref().map(|&(_, run_id)| ChunkLedger {
            run_id,
            connect_timeout,
        });
        job.already_in = self.already_in.clone();
    }

    /// Resumes run `run_id` after what earlier unfinished runs of the same content put in
    /// `table` (see `sink::chunks::committed_rows`), if they put anything.
    async fn resume(
        &mut self,
        pool: &PgPool,
        run_id: i64,
        table: &TableName,
        sha256: &str,
        sheet: &str,
    ) -> anyhow::Result<()> {
        let done = chunks::committed_rows(pool, table, sha256, sheet).await?;
        let Some(&resumed_run_id) = done.run_ids().last() else {
            return Ok(());
        };
        chunks::record_resumed(pool, run_id, resumed_run_id).await?;
        let run_ids: Vec<String> = done.run_ids().iter().map(i64::to_string).collect();
        info!(
            table = %table,
            row_count = done.row_count(),
            runs = %run_ids.join(", "),
            "resuming: rows that earlier runs of this content committed are skipped"
        );
        self.already_in = Some(Arc::new(done));
        Ok(())
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
            WritePlan::Replace { staging, .. } | WritePlan::Publish { staging, .. },
        ) = (&self.entry, plan)
        else {
            return Ok(());
        };
        chunks::record_staging(pool, *run_id, staging).await
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
        if let Some((pool, run_id)) = &self.entry
            && let Err(error) = ledger::finish_run(pool, *run_id, outcome, Some(stats), None).await
        {
            // the stats still print; `finish` records the outcome again and fails if it cannot
            warn!(error = %format!("{error:#}"), "cannot record the outcome before printing the stats");
        }
        self.write_summary(serde_json::to_string(stats)?).await
    }

    /// Records how the run ended in the ledger, releases the lock, and returns `result`. A
    /// run that succeeded but cannot be recorded fails: the next `--skip-unchanged` would not
    /// know its content is in.
    pub async fn finish(self, result: anyhow::Result<Outcome>) -> anyhow::Result<Outcome> {
        let recorded = match &self.entry {
            Some((pool, run_id)) => {
                let (outcome, error) = match &result {
                    Ok(Outcome::AllIn) => (RunOutcome::Succeeded, None),
                    Ok(Outcome::SomeRejected) => (RunOutcome::RejectedRows, None),
                    Ok(Outcome::Interrupted(signal)) => (
                        RunOutcome::Cancelled,
                        Some(format!("stopped by {}", signal.name())),
                    ),
                    Err(error) => (RunOutcome::Failed, Some(format!("{error:#}"))),
                };
                let recorded = ledger::finish_run(
                    pool,
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
            None => Ok(()),
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
            let mut temporary = path.as_os_str().to_owned();
            temporary.push(format!(".{}.tmp", std::process::id()));
            let temporary = PathBuf::from(temporary);
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

/// Marks `died` the earlier runs into `table` that are still `running` with their process
/// gone, and drops the staging tables they left. The caller holds the table's lock.
async fn bury_dead_runs(pool: &PgPool, table: &TableName) -> anyhow::Result<()> {
    for dead in chunks::bury_dead_runs(pool, table).await? {
        warn!(table = %table, run_id = dead.run_id, "an earlier run on this table ended without recording its outcome; recorded it as died");
        if let Some(staging) = &dead.staging {
            staging::discard(pool, staging).await?;
            info!(table = %table, staging = %staging, run_id = dead.run_id, "dropped the staging table the dead run left");
        }
    }
    Ok(())
}

/// The file's name without its directory, as the stats' `file` shows it.
fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |name| name.to_string_lossy().into_owned(),
    )
}
