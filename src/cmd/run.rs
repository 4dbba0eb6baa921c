//! `importer run`: read the header, connect, find or create the table, map the header, then
//! hand the job to the chosen strategy and report. Every fatal check happens before the
//! first row is written.

use std::ops::ControlFlow;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::mode::{self, WritePlan};
use super::record::RunRecord;
use super::{Outcome, Signal, wait_for_signal};
use crate::cli::{ImportArgs, Method, RunArgs};
use crate::job::ImportJob;
use crate::progress::{Progress, RowCounter};
use crate::rejects::RejectLog;
use crate::schema::{
    Column, InferredType, TypeInference, default_table_name, fold_header_row, map_header,
};
use crate::sink::{self, TableName, TargetTable};
use crate::source::{Header, SourceSpec, read_header, read_rows};
use crate::stats::{ImportStats, RunShape};
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
}

/// Runs `importer run`: the import, under its table's run lock and recorded in the run
/// ledger whatever its ending (issue 4, see `cmd::record`).
pub async fn run(args: RunArgs) -> anyhow::Result<Outcome> {
    let mut record = RunRecord::new(&args);
    let result = import(args, &mut record).await;
    record.finish(result).await
}

/// The import itself.
async fn import(args: RunArgs, record: &mut RunRecord) -> anyhow::Result<Outcome> {
    let started = Instant::now();
    let prepared = prepare(&args.import).await?;
    // issue 4: the run lock, the ledger entry and --skip-unchanged, before anything is written
    if let Some(skipped) = record.begin(&args, &prepared).await? {
        return Ok(skipped);
    }
    let table = match &prepared.existing {
        Some(table) => table.clone(),
        None if args.import.no_create => bail!(
            "table {} does not exist; create it first, or drop --no-create to create it from the sheet",
            prepared.table_name
        ),
        None if args.dry_run => {
            let column_types = infer_types(&prepared).await?;
            let columns: Vec<Column> = prepared
                .folded_names
                .iter()
                .zip(&column_types)
                .map(|(name, inferred)| inferred.column(name))
                .collect();
            let described: Vec<String> = columns
                .iter()
                .map(|column| format!("{} {}", column.name, column.sql_type))
                .collect();
            info!(table = %prepared.table_name, columns = %described.join(", "), "dry run: the table does not exist and would be created");
            TargetTable {
                name: prepared.table_name.clone(),
                columns,
            }
        }
        None => {
            let column_types = infer_types(&prepared).await?;
            create_table(&prepared, &prepared.table_name, &column_types).await?
        }
    };
    let table_name = table.name.clone();
    let cancel = CancellationToken::new();
    let rejects = RejectLog::create(
        args.rejects.as_deref(),
        &prepared.header.cells,
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
    let plan = match args.dry_run {
        true => WritePlan::Direct,
        false => mode::prepare(&mut job, args.mode, args.atomic, &args.key).await?,
    };
    let (pool, columns) = (job.pool.clone(), job.columns.clone());
    let shape = RunShape::new(args.method, &args.import.file, &table_name, &job);
    info!(
        file = %args.import.file.display(),
        sheet = %job.header.sheet_name,
        table = %table_name,
        method = args.method.name(),
        workers = shape.workers,
        batch_size = shape.batch_size,
        "import started"
    );

    let (mut report, signal) = run_job(args.method, job, args.dry_run).await?;
    let rejects_written = rejects.finish();
    let limit_passed = rejects.limit_passed();
    let complete = report.error.is_none() && signal.is_none() && !limit_passed;
    let staged_rows = report.tally.success_count;
    match mode::finish(&plan, &pool, &columns, &table_name, complete).await {
        Ok(true) => {}
        Ok(false) => report.tally.success_count = 0,
        Err(error) => {
            report.tally.success_count = 0;
            report.error.get_or_insert(error);
        }
    }
    if !matches!(plan, WritePlan::Direct) && report.tally.success_count == 0 && staged_rows > 0 {
        warn!(table = %table_name, staged_rows, "the staged rows were discarded: the table is as it was before this run");
    }
    let complete = complete && report.error.is_none();
    let stats = ImportStats::new(&shape, report.tally, started.elapsed(), complete)?;
    stats.print(args.format)?;
    record.keep_stats(&stats).await?; // --summary and the ledger's copy
    info!(
        table = %table_name,
        total_records = stats.total_records,
        success_count = stats.success_count,
        error_count = stats.error_count,
        duration_seconds = stats.duration_seconds,
        "import finished"
    );
    let written = format!(
        "{} rows are in table {table_name} from this run, {} rejected",
        stats.success_count, stats.error_count
    );
    if let Some(error) = report.error {
        return Err(error.context(format!("import stopped early; {written}")));
    }
    rejects_written?;
    if let Some(signal) = signal {
        warn!(signal = signal.name(), "import interrupted; {written}");
        return Ok(Outcome::Interrupted(signal));
    }
    if limit_passed {
        let max_errors = args.max_errors.unwrap_or_default();
        bail!(
            "stopped: more than {max_errors} rows rejected (--max-errors {max_errors}); {written}"
        );
    }
    Ok(if stats.error_count > 0 {
        Outcome::SomeRejected
    } else {
        Outcome::AllIn
    })
}

/// Runs a job to its end (with `dry_run`, converting only). A first Ctrl-C or SIGTERM cancels it: the reader stops, rows
/// already read are finished, and the signal is returned beside the report.
pub async fn run_job(
    method: Method,
    job: ImportJob,
    dry_run: bool,
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
            received = wait_for_signal(), if signal.is_none() => {
                let received = received?;
                warn!(signal = received.name(), "stopping: no more rows are read; rows already read are finished");
                signal = Some(received);
                cancel.cancel();
            }
        }
    }
}

/// Reads the header, connects, and looks the table up. Creates nothing.
pub async fn prepare(args: &ImportArgs) -> anyhow::Result<Prepared> {
    let source = SourceSpec {
        path: args.file.clone(),
        sheet: args.sheet.clone(),
        header_row: args.header_row,
        xlsx_reader: args.xlsx_reader,
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
    let pool = sink::connect(&args.database_url, workers as u32 + 1, connect_timeout).await?;
    let existing = sink::load_table(&pool, &table_name).await?;
    Ok(Prepared {
        source,
        header,
        folded_names,
        pool,
        table_name,
        existing,
        workers,
    })
}

/// Infers one type per header column over every data row of the sheet.
pub async fn infer_types(prepared: &Prepared) -> anyhow::Result<Vec<InferredType>> {
    let source = prepared.source.clone();
    let width = prepared.header.cells.len();
    blocking(move || {
        let mut inference = TypeInference::new(width);
        let mut is_header = true;
        read_rows(&source, &mut |row| {
            if is_header {
                is_header = false;
            } else {
                inference.observe_row(&row.cells);
            }
            ControlFlow::Continue(())
        })?;
        Ok(inference.finish())
    })
    .await
}

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
    /// The stats' description of a run: file name, table, effective workers and batch size.
    pub fn new(method: Method, file: &Path, table: &TableName, job: &ImportJob) -> Self {
        let batch_size = match method {
            // one row per statement
            Method::Sequential | Method::Concurrent => 1,
            Method::Batch | Method::Copy => job.batch_size,
        };
        RunShape {
            method,
            file: file.file_name().map_or_else(
                || file.display().to_string(),
                |name| name.to_string_lossy().into_owned(),
            ),
            table: table.to_string(),
            workers: job.workers,
            batch_size,
        }
    }
}
