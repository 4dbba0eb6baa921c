//! One import as a library call: [`ImportOptions`] (plain data, no clap) and an
//! [`ImportControl`] (cancel token, progress sink) in, an [`ImportReport`] or an
//! [`ImportFailure`] with its [`FailureKind`] out. `importer run` and the upload service are
//! two callers of [`run`]; printing, exit codes and HTTP statuses stay with them.
//!
//! The order of an import, every fatal check before the first row is written: the output
//! paths and `key` are checked; [`prepare`] reads the header, connects and looks the table
//! up; [`record`] takes the table's run lock and records the run in the ledger (or finds the
//! content loaded before and skips it); a missing table is created from the inferred column
//! types; [`mode`] points the job at a staging table when the mode needs one; [`load`] runs
//! the strategy; `mode` publishes; the stats are kept in the ledger and `summary`, and
//! [`record`] records the ending and releases the lock. A cancel in any phase ends the run
//! with its stats and its ledger row `cancelled`.

mod control;
pub mod load;
pub mod mode;
mod options;
pub mod prepare;
pub(crate) mod record;
mod report;

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Instant;

use anyhow::anyhow;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use self::control::{ImportControl, ProgressSink, RowsSoFar};
use self::load::run_job;
pub use self::mode::Mode;
use self::mode::WritePlan;
pub use self::options::{ImportOptions, Resume};
use self::prepare::{build_job, create_table, infer_types_until_dropped, prepare};
use self::record::RunRecord;
use self::report::Failing;
pub use self::report::{
    FailureKind, ImportFailure, ImportOutcome, ImportReport, RejectedRow, SkippedRun, failure_kind,
};
use crate::message::{shown, shown_path};
use crate::rejects::RejectLog;
use crate::schema::Column;
pub use crate::sink::ledger::DEFAULT_LEDGER_SCHEMA;
use crate::sink::ledger::RunOutcome;
use crate::sink::{self, TableName, TargetTable};
pub use crate::source::{CsvOptions, XlsReader, XlsxReader};
pub use crate::stats::ImportStats;
use crate::stats::{RunShape, Tally};
pub use crate::strategy::Method;

/// Runs one import to its end: the lock, the ledger row, the rows, the publish, the ledger's
/// last word. Nothing is printed on stdout; logs go through `tracing`. A cancel of
/// `control` ends it `Cancelled` (the rows already read are finished, the stats count them).
/// The future is `Send`: a service spawns it on its runtime like any task.
pub async fn run(
    options: ImportOptions,
    control: ImportControl,
) -> Result<ImportReport, ImportFailure> {
    let started = Instant::now();
    if let Err(error) = record::check_outputs(&options).and_then(|()| mode::check_key(&options.key))
    {
        return Err(ImportFailure::new(error, None, None));
    }
    let mut record = RunRecord::new(&options);
    let result = import(&options, &mut record, &control, started).await;
    let kept_stats = record.stats().cloned();
    let run_id = record.run_id();
    let skipped = record.skipped().cloned();
    let (ending, import) = match result {
        Ok(import) => (Ok(import.outcome), Some(import)),
        Err(error) => (Err(error), None),
    };
    let ending = record.finish(ending, control.cause()).await;
    match (ending, import) {
        (Ok(outcome), Some(import)) => {
            let rejections = import
                .rejects
                .as_ref()
                .map(|rejects| rejects.kept())
                .unwrap_or_default();
            Ok(ImportReport {
                rejected_total: import.stats.error_count,
                stats: import.stats,
                outcome,
                run_id,
                rejections,
                skipped,
            })
        }
        (Err(error), _) => Err(ImportFailure::new(error, kept_stats, run_id)),
        (Ok(_), None) => unreachable!("a run that failed cannot end well"),
    }
}

/// What [`import`] ends with, short of a failure.
struct Import {
    outcome: ImportOutcome,
    stats: ImportStats,
    /// The run's rejects log, once it was opened.
    rejects: Option<Arc<RejectLog>>,
}

/// The file as the log shows it.
fn shown_file(options: &ImportOptions) -> String {
    match &options.display_name {
        Some(name) => shown(name).to_string(),
        None => shown_path(&options.file).to_string(),
    }
}

/// The import itself.
async fn import(
    options: &ImportOptions,
    record: &mut RunRecord,
    control: &ImportControl,
    started: Instant,
) -> anyhow::Result<Import> {
    let prepared = match control.unless_cancelled(prepare(options)).await? {
        ControlFlow::Continue(prepared) => prepared,
        ControlFlow::Break(()) => {
            return stopped_before_import(options, record, control, started).await;
        }
    };
    // the run lock, the ledger entry and skip_unchanged, before anything is written
    let begun = record.begin(options, &prepared, control).await;
    control.report_started(record.run_id());
    match begun? {
        Some(ImportOutcome::Cancelled) => {
            return stopped_before_import(options, record, control, started).await;
        }
        Some(ImportOutcome::Skipped) => {
            let shape = RunShape::planned(options);
            let mut stats = ImportStats::new(&shape, Tally::default(), started.elapsed(), true)
                .failing_as(FailureKind::Internal)?;
            stats.table = prepared.table_name.to_string();
            return Ok(Import {
                outcome: ImportOutcome::Skipped,
                stats,
                rejects: None,
            });
        }
        Some(outcome) => {
            unreachable!("begin ends a run only as cancelled or skipped, not {outcome:?}")
        }
        None => {}
    }
    let mut create_table_sql = None;
    let table = match &prepared.existing {
        Some(table) => table.clone(),
        None if !options.create_table => {
            return Err(anyhow!(
                "table {} does not exist; create it first, or drop --no-create to create it from the sheet",
                prepared.table_name
            ))
            .failing_as(FailureKind::Input);
        }
        None => {
            let inferring = infer_types_until_dropped(&prepared);
            let column_types = match control
                .unless_cancelled(inferring)
                .await
                .failing_as(FailureKind::Input)?
            {
                ControlFlow::Continue(column_types) => column_types,
                ControlFlow::Break(()) => {
                    return stopped_before_import(options, record, control, started).await;
                }
            };
            if control.is_cancelled() {
                return stopped_before_import(options, record, control, started).await;
            }
            if options.dry_run {
                let columns: Vec<Column> = prepared
                    .folded_names
                    .iter()
                    .zip(&column_types)
                    .map(|(name, inferred)| inferred.column(name))
                    .collect();
                let statement = sink::create_table_sql(
                    &prepared.table_name,
                    &prepared.folded_names,
                    &column_types,
                );
                info!(table = %prepared.table_name, statement = %statement, "dry run: the table does not exist and would be created");
                create_table_sql = Some(statement);
                TargetTable {
                    name: prepared.table_name.clone(),
                    columns,
                }
            } else {
                create_table(&prepared, &prepared.table_name, &column_types).await?
            }
        }
    };
    let table_name = table.name.clone();
    let cancel = CancellationToken::new();
    let rejects = RejectLog::create(
        options.rejects.as_deref(),
        &prepared.header,
        options.max_errors,
        cancel.clone(),
    )
    .failing_as(FailureKind::Usage)?
    .keeping(options.kept_rejections);
    let rejects = Arc::new(rejects);
    let mut job = build_job(
        &prepared,
        table,
        options.method,
        options.batch_size,
        Arc::clone(&rejects),
        cancel,
    )?;
    if control.is_cancelled() {
        return stopped_before_import(options, record, control, started).await;
    }
    record.attach_to(&mut job, options.connect_timeout);
    let plan = match options.dry_run {
        true => WritePlan::Direct,
        false => {
            mode::prepare(
                &mut job,
                options.mode,
                options.atomic,
                &options.key,
                options.swap_timeout,
            )
            .await?
        }
    };
    record.keep_staging(&plan).await?;
    let (pool, columns) = (job.pool.clone(), job.columns.clone());
    let fence = job.chunk_ledger.clone();
    let shape = RunShape::new(options.method, options.file_name(), &table_name, &job);
    info!(
        file = %shown_file(options),
        sheet = %shown(&job.header.sheet_name),
        table = %table_name,
        method = options.method.name(),
        workers = shape.workers,
        batch_size = shape.batch_size,
        "import started"
    );

    let (mut report, cancelled) = run_job(options.method, job, options.dry_run, control).await;
    if report.unconfirmed.is_some() {
        record.forget_server();
    }
    let rejects_written = rejects.finish();
    let limit_passed = rejects.limit_passed();
    let complete = report.error.is_none() && !cancelled && !limit_passed;
    let staged_rows = report.tally.success_count;
    let published = match mode::finish(
        &plan,
        &pool,
        &columns,
        &table_name,
        complete,
        fence.as_ref(),
    )
    .await
    {
        Ok(published) => published,
        Err(error) => {
            let error = describe_publish_error(&pool, error).await;
            report.error.get_or_insert(error);
            false
        }
    };
    if !published {
        // staged rows that never reached the target are counted as rejected: every row read
        // is in the stats, and success + error == total still holds
        report.tally.error_count += report.tally.success_count;
        report.tally.success_count = 0;
    }
    if !matches!(plan, WritePlan::Direct) && report.tally.success_count == 0 && staged_rows > 0 {
        warn!(table = %table_name, staged_rows, "the staged rows were discarded: the table is as it was before this run");
    }
    let complete = complete && report.error.is_none();
    let mut stats = ImportStats::new(&shape, report.tally, started.elapsed(), complete)
        .failing_as(FailureKind::Internal)?;
    if options.dry_run {
        stats = stats.into_dry_run(create_table_sql);
    }
    let rows_outcome = outcome_of(report.error.is_some(), cancelled, complete, &stats);
    // the ledger before stdout: a run killed while printing its stats has recorded them
    let summary_written = record.keep_stats(&stats, rows_outcome).await;
    info!(
        table = %table_name,
        total_records = stats.total_records,
        success_count = stats.success_count,
        error_count = stats.error_count,
        duration_seconds = stats.duration_seconds,
        "import finished"
    );
    let verb = if options.dry_run { "would be" } else { "are" };
    let written = match report
        .unconfirmed
        .filter(|_| matches!(plan, WritePlan::Direct))
    {
        Some(at_most) => unconfirmed_rows(&stats, at_most, &table_name),
        None => format!(
            "{} rows {verb} in table {table_name} from this run, {} rejected",
            stats.success_count, stats.error_count
        ),
    };
    let outputs_written = rejects_written.and(summary_written);
    if let Some(error) = report.error {
        warn_unwritten(&outputs_written);
        return Err(error.context(format!("import stopped early; {written}")));
    }
    if limit_passed {
        warn_unwritten(&outputs_written);
        let max_errors = options.max_errors.unwrap_or_default();
        return Err(anyhow!(
            "stopped: more than {max_errors} rows rejected (--max-errors {max_errors}); {written}"
        ))
        .failing_as(FailureKind::Input);
    }
    let outcome = if cancelled {
        let rerun = record
            .rerun_note(stats.success_count)
            .map_or_else(String::new, |note| format!("; {note}"));
        warn!(
            signal = control.cause(),
            "import interrupted; {written}{rerun}"
        );
        ImportOutcome::Cancelled
    } else if stats.error_count > 0 {
        ImportOutcome::SomeRejected
    } else {
        ImportOutcome::AllIn
    };
    if let Err(error) = outputs_written {
        // the rows are committed: the ledger keeps their outcome, and the error says so
        record.keep_rows_outcome(outcome);
        // the service's fault (a full disk, say), not the input's: a server error, not a 422
        return Err(error.context(format!(
            "{written} (recorded as {} in the run ledger), but an output file failed",
            ledger_outcome_name(outcome)
        )))
        .failing_as(FailureKind::Internal);
    }
    Ok(Import {
        outcome,
        stats,
        rejects: Some(rejects),
    })
}

/// Ends a run cancelled before its first row was read: the stats (zero rows) are kept like
/// those of any run, and the run is `Cancelled`.
async fn stopped_before_import(
    options: &ImportOptions,
    record: &mut RunRecord,
    control: &ImportControl,
    started: Instant,
) -> anyhow::Result<Import> {
    warn!(
        signal = control.cause(),
        "stopped before the import started; nothing was written"
    );
    let shape = RunShape::planned(options);
    let mut stats = ImportStats::new(&shape, Tally::default(), started.elapsed(), true)
        .failing_as(FailureKind::Internal)?;
    if options.dry_run {
        stats = stats.into_dry_run(None);
    }
    let summary_written = record.keep_stats(&stats, RunOutcome::Cancelled).await;
    if let Err(error) = summary_written {
        record.keep_rows_outcome(ImportOutcome::Cancelled);
        return Err(error.context(format!(
            "stopped by {} before the import started, nothing was written",
            control.cause()
        )));
    }
    Ok(Import {
        outcome: ImportOutcome::Cancelled,
        stats,
        rejects: None,
    })
}

/// Logs an output file that failed when a worse error is the one reported.
fn warn_unwritten(outputs_written: &anyhow::Result<()>) {
    if let Err(error) = outputs_written {
        warn!(error = %format!("{error:#}"), "an output file could not be written");
    }
}

/// The ledger's name of an outcome, for messages.
fn ledger_outcome_name(outcome: ImportOutcome) -> &'static str {
    match outcome {
        ImportOutcome::AllIn => "succeeded",
        ImportOutcome::SomeRejected => "rejected_rows",
        ImportOutcome::Cancelled => "cancelled",
        ImportOutcome::Skipped => "skipped",
    }
}

/// Rewords a failed publish: the server's message once, with the constraint's key columns
/// (never the key values of its DETAIL, which are cell values).
async fn describe_publish_error(pool: &PgPool, error: anyhow::Error) -> anyhow::Error {
    match sink::violation::describe(pool, &error).await {
        Some(violation) => anyhow::anyhow!("{error}: {violation}"),
        None => error,
    }
}

/// The ledger outcome the stats stand for, as [`record::RunRecord::finish`] will
/// record it from the run's result.
fn outcome_of(failed: bool, interrupted: bool, complete: bool, stats: &ImportStats) -> RunOutcome {
    if failed {
        RunOutcome::Failed
    } else if interrupted {
        RunOutcome::Cancelled
    } else if !complete {
        RunOutcome::Failed // --max-errors passed
    } else if stats.error_count > 0 {
        RunOutcome::RejectedRows
    } else {
        RunOutcome::Succeeded
    }
}

/// What a run that lost the server for good can say of its rows (its stats say the lower
/// figure): those confirmed durable, and those whose commit the server had acknowledged.
fn unconfirmed_rows(stats: &ImportStats, at_most: u64, table: &TableName) -> String {
    format!(
        "at least {} rows are in table {table} (confirmed), at most {at_most}; {} rejected; the server could not be reached again within --connect-timeout to count them exactly",
        stats.success_count, stats.error_count
    )
}
#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send<T: Send>(value: T) -> T {
        value
    }

    #[test]
    fn an_import_is_a_future_a_multi_threaded_runtime_can_spawn() {
        let options = ImportOptions::new("never-read.csv".into(), "postgres://localhost/none");
        drop(assert_send(run(options, ImportControl::new())));
    }
}
