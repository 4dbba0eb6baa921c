//! `--mode` and `--atomic`: where a run writes, and what happens once the rows are in.
//!
//! - append: straight into the target, committing as it goes (the contract's default).
//! - upsert: straight into the target with `ON CONFLICT (key) DO UPDATE`; of rows sharing a
//!   key only the last is written (the earlier ones are rejected as superseded).
//! - `--atomic` (append or upsert): into a staging table, published into the target with
//!   one INSERT ... SELECT in one transaction; any stop before that leaves the target as it was.
//! - replace: into a fresh staging table with the target's unique indexes only; the other
//!   indexes are built after the load, then the staging table takes the target's place in one
//!   transaction. Readers see the old rows until the commit and the new ones after it. The
//!   swap's lock is tried in short waits, so that readers never queue long behind it, for up
//!   to `--swap-timeout`.
//!
//! Orchestration only: the SQL is in `sink::staging` and `sink::conflict_clause`.

use std::time::Duration;

use anyhow::anyhow;
use sqlx::PgPool;
use tracing::info;

use super::report::{Failing, FailureKind};
use crate::job::ImportJob;
use crate::schema::{Column, fold_header};
use crate::sink::chunks::ChunkLedger;
use crate::sink::staging::{self, Published, SecondaryIndex};
use crate::sink::{self, TableName};

/// What a run does to the rows already in the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Add the file's rows.
    Append,
    /// The table ends holding exactly the file's good rows, swapped in at once.
    Replace,
    /// Update rows whose key exists, insert the others.
    Upsert,
}

impl Mode {
    /// The mode's name, as on the command line and in the run ledger.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Append => "append",
            Mode::Replace => "replace",
            Mode::Upsert => "upsert",
        }
    }
}

/// Where the rows of a run go before they are in the target.
pub enum WritePlan {
    /// Straight into the target.
    Direct,
    /// Into `staging`, which replaces the target at the end.
    Replace {
        staging: TableName,
        indexes: Vec<SecondaryIndex>,
        /// How long the swap may keep trying for its lock (--swap-timeout).
        swap_timeout: Duration,
    },
    /// Into `staging`, published into the target at the end (with `conflict` for upsert).
    Publish {
        staging: TableName,
        conflict: Option<String>,
    },
}

/// Refuses `--key` column names PostgreSQL would truncate; run before anything is locked or
/// created.
pub fn check_key(key: &[String]) -> anyhow::Result<()> {
    for column in key {
        sink::check_identifier("--key column name", column).failing_as(FailureKind::Usage)?;
    }
    Ok(())
}

/// Sets the job up for `mode`: checks `--key`, points the job at a staging table when the
/// mode needs one (creating it), and returns the plan to finish with; a replace's swap keeps
/// trying for its lock for up to `swap_timeout`.
pub async fn prepare(
    job: &mut ImportJob,
    mode: Mode,
    atomic: bool,
    key: &[String],
    swap_timeout: Duration,
) -> anyhow::Result<WritePlan> {
    if mode != Mode::Upsert && !key.is_empty() {
        return Err(anyhow!("--key is only used with --mode upsert"))
            .failing_as(FailureKind::Usage);
    }
    let target = job.table.name.clone();
    let mut conflict = None;
    if mode == Mode::Upsert {
        if key.is_empty() {
            return Err(anyhow!(
                "--mode upsert needs --key COL[,COL]: the columns that identify a row"
            ))
            .failing_as(FailureKind::Usage);
        }
        job.key_positions = key_positions(job, key).failing_as(FailureKind::Input)?;
        conflict = Some(
            sink::conflict_clause(&job.pool, &target, &job.columns, &job.key_positions).await?,
        );
    }
    let staging = TableName {
        schema: target.schema.clone(),
        name: staging::run_table_name("importer_staging"),
    };
    let plan = match (mode, atomic) {
        (Mode::Append, false) => WritePlan::Direct,
        (Mode::Upsert, false) => {
            job.conflict = conflict;
            WritePlan::Direct
        }
        (Mode::Replace, _) => {
            let indexes = staging::create_for_replace(&job.pool, &target, &staging).await?;
            WritePlan::Replace {
                staging,
                indexes,
                swap_timeout,
            }
        }
        (Mode::Append | Mode::Upsert, true) => {
            staging::create_for_publish(&job.pool, &target, &staging).await?;
            WritePlan::Publish { staging, conflict }
        }
    };
    if let WritePlan::Replace { staging, .. } | WritePlan::Publish { staging, .. } = &plan {
        info!(table = %target, staging = %staging, mode = mode.name(), "loading into a staging table");
        job.table.name = staging.clone();
    }
    Ok(plan)
}

/// Finishes a run: with `complete`, moves the staged rows into the target and returns true;
/// otherwise drops the staging table and returns false, the target untouched. `Direct`
/// runs are already done (true). With `fence` (the run's chunk ledger), publishing fails unless
/// the run still holds the target's lock.
pub async fn finish(
    plan: &WritePlan,
    pool: &PgPool,
    columns: &[Column],
    target: &TableName,
    complete: bool,
    fence: Option<&ChunkLedger>,
) -> anyhow::Result<bool> {
    let staging_table = match plan {
        WritePlan::Direct => return Ok(true),
        WritePlan::Replace { staging, .. } | WritePlan::Publish { staging, .. } => staging,
    };
    if !complete {
        staging::discard(pool, staging_table).await?;
        return Ok(false);
    }
    let published = match plan {
        WritePlan::Direct => Ok(()),
        WritePlan::Replace {
            staging,
            indexes,
            swap_timeout,
        } => {
            match staging::build_indexes(pool, staging, indexes).await {
                Ok(()) => staging::swap_in(pool, staging, target, *swap_timeout, fence).await.map(|published| {
                    if published == Published::Refilled {
                        info!(table = %target, "the table has grants, triggers or dependants: emptied and refilled in one transaction instead of swapped");
                    }
                }),
                Err(error) => Err(error),
            }
        }
        WritePlan::Publish { staging, conflict } => {
            staging::publish(pool, staging, target, columns, conflict.as_deref(), fence)
                .await
                .map(|_| ())
        }
    };
    if published.is_err() {
        // best effort: the publishing error is the one to report
        staging::discard(pool, staging_table).await.ok();
    }
    published.map(|()| true)
}

/// The positions (in the job's sheet columns) of the `--key` columns, matched like headers.
fn key_positions(job: &ImportJob, key: &[String]) -> anyhow::Result<Vec<usize>> {
    key.iter()
        .map(|wanted| {
            let folded = fold_header(wanted);
            // like the header: an exact column name first
            job.columns
                .iter()
                .position(|column| column.name == *wanted)
                .or_else(|| {
                    job.columns
                        .iter()
                        .position(|column| fold_header(&column.name) == folded)
                })
                .ok_or_else(|| {
                    let names: Vec<String> = job
                        .columns
                        .iter()
                        .map(|column| format!("{:?}", column.name))
                        .collect();
                    anyhow::anyhow!(
                        "--key {wanted:?} is not a column of the sheet (its columns: {})",
                        names.join(", ")
                    )
                })
        })
        .collect()
}
