//! `importer run`: read the header, connect, find or create the table, map the header, then
//! hand the job to the chosen strategy and report. Every fatal check happens before the
//! first row is written.

use std::ops::ControlFlow;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::mode::{self, WritePlan};
use super::record::{self, RunRecord};
use super::{Outcome, Signal, SignalListener};
use crate::cli::{ImportArgs, Method, RunArgs};
use crate::job::ImportJob;
use crate::message::{shown, shown_path};
use crate::progress::{self, Progress, RowCounter};
use crate::rejects::RejectLog;
use crate::schema::{
    Column, InferredType, TypeInference, default_table_name, fold_header_row, map_header,
};
use crate::sink::ledger::RunOutcome;
use crate::sink::{self, TableName, TargetTable};
use crate::source::{
    CsvOptions, Header, SourceSpec, StdinSpool, input_name, is_stdin, read_header, read_rows,
};
use crate::stats::{ImportStats, RunShape, Tally};
use crate::strategy::{self, RunReport};

/// Everything settled before a run writes: the source, its header, the pool and the table.
pub struct Prepared {
    /// The file and sheet.
    pub source: SourceSpec,
    /// The header row.
    pub header: Header,
    /// The header cells folded into column names (checked: none empty, none twice).
    pub folded_names: Vec<String>,
    /// Connections, at least one per worker.
    pub pool: PgPool,
    /// The target table's name (given, or from the file's stem).
    pub table_name: TableName,
    /// The target table, when it exists.
    pub existing: Option<TargetTable>,
    /// Worker connections for concurrent, batch and copy.
    pub workers: usize,
    /// The copy of standard input that `source` reads, kept until the run ends.
    pub stdin: Option<StdinSpool>,
}

/// Runs `importer run`: the import, under its table's run lock and recorded in the run
/// ledger whatever its ending (see `cmd::record`). Ctrl-C and SIGTERM are listened for from
/// the first moment, so that a signal in any phase (the header read, the lock wait, type
/// inference, the import) ends the run with its stats and its ledger row `cancelled`.
pub async fn run(args: RunArgs) -> anyhow::Result<Outcome> {
    let mut signals = SignalListener::install()?;
    let started = Instant::now();
    record::check_outputs(&args)?;
    mode::check_key(&args.key)?;
    let mut record = RunRecord::new(&args);
    let result = import(&args, &mut record, &mut signals, started).await;
    record.finish(result).await
}

/// Runs `phase` unless a signal comes first, in which case `phase` is dropped where it
/// stands: only phases that read, connect or wait (and create nothing) are run this way.
pub(crate) async fn unless_signalled<T>(
    signals: &mut SignalListener,
    phase: impl Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<ControlFlow<Signal, T>> {
    tokio::select! {
        result = phase => result.map(ControlFlow::Continue),
        signal = signals.recv() => Ok(ControlFlow::Break(signal)),
    }
}

/// The import itself.
async fn import(
    args: &RunArgs,
    record: &mut RunRecord,
    signals: &mut SignalListener,
    started: Instant,
) -> anyhow::Result<Outcome> {
    let prepared = match unless_signalled(signals, prepare(&args.import)).await? {
        ControlFlow::Continue(prepared) => prepared,
        ControlFlow::Break(signal) => {
            return stopped_before_import(args, record, signal, started).await;
        }
    };
    // the run lock, the ledger entry and --skip-unchanged, before anything is written
    match record.begin(args, &prepared, signals).await? {
        Some(Outcome::Interrupted(signal)) => {
            return stopped_before_import(args, record, signal, started).await;
        }
        Some(skipped) => return Ok(skipped),
        None => {}
    }
    let mut create_table_sql = None;
    let table = match &prepared.existing {
        Some(table) => table.clone(),
        None if args.import.no_create => bail!(
            "table {} does not exist; create it first, or drop --no-create to create it from the sheet",
            prepared.table_name
        ),
        None => {
            let inferring = infer_types_until_dropped(&prepared);
            let column_types = match unless_signalled(signals, inferring).await? {
                ControlFlow::Continue(column_types) => column_types,
                ControlFlow::Break(signal) => {
                    return stopped_before_import(args, record, signal, started).await;
                }
            };
            if let Some(signal) = signals.pending() {
                return stopped_before_import(args, record, signal, started).await;
            }
            if args.dry_run {
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
        args.rejects.as_deref(),
        &prepared.header,
        args.max_errors,
        cancel.clone(),
    )?;
    let rejects = Arc::new(rejects);
    let mut job = build_job(
        &prepared,
        table,
        args.method,
        args.import.batch_size,
        Arc::clone(&rejects),
        cancel,
    )?;
    if let Some(signal) = signals.pending() {
        return stopped_before_import(args, record, signal, started).await;
    }
    record.attach_to(&mut job, Duration::from_secs(args.import.connect_timeout));
    let plan = match args.dry_run {
        true => WritePlan::Direct,
        false => {
            let swap_timeout = std::time::Duration::from_secs(args.swap_timeout);
            mode::prepare(&mut job, args.mode, args.atomic, &args.key, swap_timeout).await?
        }
    };
    record.keep_staging(&plan).await?;
    let (pool, columns) = (job.pool.clone(), job.columns.clone());
    let fence = job.chunk_ledger.clone();
    let shape = RunShape::new(args.method, &args.import.file, &table_name, &job);
    info!(
        file = %shown_path(&args.import.file),
        sheet = %shown(&job.header.sheet_name),
        table = %table_name,
        method = args.method.name(),
        workers = shape.workers,
        batch_size = shape.batch_size,
        "import started"
    );

    let (mut report, signal) =
        run_job_until_signal(args.method, job, args.dry_run, signals).await?;
    if report.unconfirmed.is_some() {
        record.forget_server();
    }
    let rejects_written = rejects.finish();
    let limit_passed = rejects.limit_passed();
    let complete = report.error.is_none() && signal.is_none() && !limit_passed;
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
    let mut stats = ImportStats::new(&shape, report.tally, started.elapsed(), complete)?;
    if args.dry_run {
        stats = stats.into_dry_run(create_table_sql);
    }
    let rows_outcome = outcome_of(report.error.is_some(), signal.is_some(), complete, &stats);
    // the ledger before stdout: a run killed while printing its stats has recorded them
    let summary_written = record.keep_stats(&stats, rows_outcome).await;
    stats.print(args.format)?;
    info!(
        table = %table_name,
        total_records = stats.total_records,
        success_count = stats.success_count,
        error_count = stats.error_count,
        duration_seconds = stats.duration_seconds,
        "import finished"
    );
    let verb = if args.dry_run { "would be" } else { "are" };
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
        let max_errors = args.max_errors.unwrap_or_default();
        bail!(
            "stopped: more than {max_errors} rows rejected (--max-errors {max_errors}); {written}"
        );
    }
    let outcome = match signal {
        Some(signal) => {
            warn!(signal = signal.name(), "import interrupted; {written}");
            Outcome::Interrupted(signal)
        }
        None if stats.error_count > 0 => Outcome::SomeRejected,
        None => Outcome::AllIn,
    };
    if let Err(error) = outputs_written {
        // the rows are committed: the ledger keeps their outcome, and the error says so
        record.keep_rows_outcome(outcome);
        return Err(error.context(format!(
            "{written} (recorded as {} in the run ledger), but an output file failed",
            ledger_outcome_name(outcome)
        )));
    }
    Ok(outcome)
}

/// Ends a run stopped by a signal before its first row was read: the stats (zero rows) are
/// printed and kept like those of any run, and the run is `Interrupted`.
async fn stopped_before_import(
    args: &RunArgs,
    record: &mut RunRecord,
    signal: Signal,
    started: Instant,
) -> anyhow::Result<Outcome> {
    warn!(
        signal = signal.name(),
        "stopped before the import started; nothing was written"
    );
    let shape = RunShape::planned(args);
    let mut stats = ImportStats::new(&shape, Tally::default(), started.elapsed(), true)?;
    if args.dry_run {
        stats = stats.into_dry_run(None);
    }
    let summary_written = record.keep_stats(&stats, RunOutcome::Cancelled).await;
    stats.print(args.format)?;
    if let Err(error) = summary_written {
        record.keep_rows_outcome(Outcome::Interrupted(signal));
        return Err(error.context(format!(
            "stopped by {} before the import started, nothing was written",
            signal.name()
        )));
    }
    Ok(Outcome::Interrupted(signal))
}

/// Logs an output file that failed when a worse error is the one reported.
fn warn_unwritten(outputs_written: &anyhow::Result<()>) {
    if let Err(error) = outputs_written {
        warn!(error = %format!("{error:#}"), "an output file could not be written");
    }
}

/// The ledger's name of an outcome, for messages.
fn ledger_outcome_name(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::AllIn => "succeeded",
        Outcome::SomeRejected => "rejected_rows",
        Outcome::Interrupted(_) => "cancelled",
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

/// The ledger outcome the stats stand for, as [`super::record::RunRecord::finish`] will
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

/// Runs a job to its end (with `dry_run`, converting only). A first Ctrl-C or SIGTERM cancels it: the reader stops, rows
/// already read are finished, and the signal is returned beside the report.
pub async fn run_job(
    method: Method,
    job: ImportJob,
    dry_run: bool,
) -> anyhow::Result<(RunReport, Option<Signal>)> {
    let mut signals = SignalListener::install()?;
    run_job_until_signal(method, job, dry_run, &mut signals).await
}

/// [`run_job`] with the listener of the whole run, so that a signal that came just before
/// the job stops it too.
async fn run_job_until_signal(
    method: Method,
    job: ImportJob,
    dry_run: bool,
    signals: &mut SignalListener,
) -> anyhow::Result<(RunReport, Option<Signal>)> {
    let cancel = job.cancel.clone();
    let job = Arc::new(job);
    let mut progress = Progress::start(job.header.declared_row_count);
    let mut ticks = tokio::time::interval(progress.interval());
    let running = {
        let job = Arc::clone(&job);
        async move {
            if dry_run {
                strategy::dry_run(job).await
            } else {
                strategy::run(method, job).await
            }
        }
    };
    tokio::pin!(running);
    let mut signal: Option<Signal> = None;
    loop {
        tokio::select! {
            report = &mut running => {
                progress.finish();
                return Ok((report, signal));
            }
            _ = ticks.tick() => progress.update(job.progress.get()),
            received = signals.recv(), if signal.is_none() => {
                progress.clear();
                warn!(signal = received.name(), "stopping: no more rows are read; rows already read are finished");
                signal = Some(received);
                cancel.cancel();
            }
        }
    }
}

/// Reads the header, connects, and looks the table up. Creates nothing.
pub async fn prepare(args: &ImportArgs) -> anyhow::Result<Prepared> {
    let stdin = match is_stdin(&args.file) {
        true => Some(blocking(StdinSpool::create).await?),
        false => None,
    };
    let source = SourceSpec {
        path: stdin
            .as_ref()
            .map_or_else(|| args.file.clone(), |spool| spool.path().to_path_buf()),
        sheet: args.sheet.clone(),
        header_row: args.header_row,
        csv: csv_options(args),
        xlsx_reader: args.xlsx_reader,
        xls_reader: args.xls_reader,
    };
    let header = blocking({
        let source = source.clone();
        move || read_header(&source)
    })
    .await?;
    let folded_names = fold_header_row(&header.cells).with_context(|| {
        format!(
            "bad header in row {} of {}",
            header.row_number,
            args.file.display()
        )
    })?;
    let table_name = match &args.table {
        Some(table) => TableName::parse(table)?,
        None => TableName::parse(&default_table_name(&args.file)).with_context(|| {
            format!(
                "cannot name a table after {}; pass --table",
                args.file.display()
            )
        })?,
    };
    let workers = args.workers.map_or_else(available_cores, usize::from);
    let connect_timeout = std::time::Duration::from_secs(args.connect_timeout);
    let pool = sink::connect(
        args.database_url.as_deref(),
        workers as u32 + 1,
        connect_timeout,
    )
    .await?;
    let existing = sink::load_table(&pool, &table_name).await?;
    if existing.is_none() && !args.no_create {
        // before the run lock and the ledger: a name PostgreSQL would cut fails cleanly
        sink::check_column_names(&folded_names)?;
    }
    Ok(Prepared {
        source,
        header,
        folded_names,
        pool,
        table_name,
        existing,
        workers,
        stdin,
    })
}

/// The CSV reader's options from the CSV flags (cli has checked they go with CSV input).
fn csv_options(args: &ImportArgs) -> CsvOptions {
    let defaults = CsvOptions::default();
    CsvOptions {
        forced: args.is_csv_input(),
        delimiter: args.csv.delimiter,
        quote: args.csv.quote.unwrap_or(defaults.quote),
        encoding: args.csv.encoding,
        null_string: args.csv.null_string.clone(),
        label: is_stdin(&args.file).then(|| "stdin".to_string()),
    }
}

/// Infers one type per header column over every data row of the sheet.
pub async fn infer_types(prepared: &Prepared) -> anyhow::Result<Vec<InferredType>> {
    infer_types_until(prepared, CancellationToken::new()).await
}

/// [`infer_types`] that stops reading once the future is dropped (a signal came first), so
/// that a large sheet is not read to its end for nothing.
async fn infer_types_until_dropped(prepared: &Prepared) -> anyhow::Result<Vec<InferredType>> {
    let stop = CancellationToken::new();
    let _stop_when_dropped = stop.clone().drop_guard();
    infer_types_until(prepared, stop).await
}

async fn infer_types_until(
    prepared: &Prepared,
    stop: CancellationToken,
) -> anyhow::Result<Vec<InferredType>> {
    let source = prepared.source.clone();
    let width = prepared.header.cells.len();
    let expected_rows = prepared.header.declared_row_count;
    info!(table = %prepared.table_name, total_rows = expected_rows, "the table does not exist: inferring column types over every row");
    let counter = Arc::new(RowCounter::default());
    let counted = Arc::clone(&counter);
    let inferring = blocking(move || {
        let mut inference = TypeInference::new(width);
        let mut is_header = true;
        let mut uncounted = 0;
        read_rows(&source, &mut |row| {
            if stop.is_cancelled() {
                return ControlFlow::Break(());
            }
            if is_header {
                is_header = false;
            } else if row.rejection.is_none() {
                // an unreadable row is rejected, so it says nothing of the column types
                inference.observe_row(&row.cells);
                uncounted += 1;
                if uncounted == INFERENCE_COUNT_ROWS {
                    counted.add(std::mem::take(&mut uncounted));
                }
            }
            ControlFlow::Continue(())
        })?;
        Ok(inference.finish())
    });
    progress::track("inferring column types", expected_rows, &counter, inferring).await
}

/// Rows the inference pass reads between two updates of its progress counter.
const INFERENCE_COUNT_ROWS: u64 = 1024;

/// Creates `name` with one column per header cell and the given types, and reads it back.
pub async fn create_table(
    prepared: &Prepared,
    name: &TableName,
    column_types: &[InferredType],
) -> anyhow::Result<TargetTable> {
    sink::create_table(&prepared.pool, name, &prepared.folded_names, column_types).await?;
    info!(table = %name, "created table from the sheet's header and inferred types");
    sink::load_table(&prepared.pool, name)
        .await?
        .with_context(|| format!("table {name} vanished right after it was created"))
}

/// Builds the job: maps the header onto the table (fatal on an unknown column).
pub fn build_job(
    prepared: &Prepared,
    table: TargetTable,
    method: Method,
    batch_size: u32,
    rejects: Arc<RejectLog>,
    cancel: CancellationToken,
) -> anyhow::Result<ImportJob> {
    let positions = map_header(
        &prepared.header.cells,
        &table.columns,
        &table.name.to_string(),
    )?;
    let columns = positions
        .iter()
        .map(|&index| table.columns[index].clone())
        .collect();
    let workers = match method {
        Method::Sequential => 1,
        Method::Concurrent | Method::Batch | Method::Copy => prepared.workers,
    };
    Ok(ImportJob {
        source: prepared.source.clone(),
        header: prepared.header.clone(),
        table,
        columns,
        pool: prepared.pool.clone(),
        workers,
        batch_size: batch_size as usize,
        rejects,
        key_positions: Vec::new(),
        conflict: None,
        progress: RowCounter::default(),
        chunk_ledger: None,
        already_in: None,
        cancel,
    })
}

/// Runs blocking file work off the async runtime.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .context("the file reader panicked")?
}

/// The number of available cores (the default worker count).
fn available_cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

impl RunShape {
    /// The shape a run's flags give, before its job is built (for the stats of a run stopped
    /// before it started).
    pub fn planned(args: &RunArgs) -> Self {
        let workers = match args.method {
            Method::Sequential => 1,
            Method::Concurrent | Method::Batch | Method::Copy => args
                .import
                .workers
                .map_or_else(available_cores, usize::from),
        };
        let batch_size = match args.method {
            Method::Sequential | Method::Concurrent => 1,
            Method::Batch | Method::Copy => args.import.batch_size as usize,
        };
        let file = &args.import.file;
        RunShape {
            method: args.method,
            file: file.file_name().map_or_else(
                || file.display().to_string(),
                |name| name.to_string_lossy().into_owned(),
            ),
            table: args
                .import
                .table
                .clone()
                .unwrap_or_else(|| default_table_name(file)),
            workers,
            batch_size,
        }
    }

    /// The stats' description of a run: file name, table, effective workers and batch size.
    pub fn new(method: Method, file: &Path, table: &TableName, job: &ImportJob) -> Self {
        let batch_size = match method {
            // one row per statement
            Method::Sequential | Method::Concurrent => 1,
            Method::Batch | Method::Copy => job.batch_size,
        };
        RunShape {
            method,
            file: input_name(file),
            table: table.to_string(),
            workers: job.workers,
            batch_size,
        }
    }
}
