//! What an import settles before it writes: the source and its header, the connection pool,
//! the table (found, or its column types inferred and created), and the job that maps the
//! header onto it. Creates nothing but the table; everything else is read or opened.
//! Public for the benches, which time a job without the run around it.

use std::ops::ControlFlow;
use std::sync::Arc;

use anyhow::Context;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::options::ImportOptions;
use super::report::{Failing, FailureKind};
use crate::job::ImportJob;
use crate::message::shown;
use crate::progress::{self, RowCounter};
use crate::rejects::RejectLog;
use crate::schema::{InferredType, TypeInference, default_table_name, fold_header_row, map_header};
use crate::sink::{self, TableName, TargetTable};
use crate::source::{CsvOptions, Header, SourceSpec, StdinSpool, is_stdin, read_header, read_rows};
use crate::stats::RunShape;
use crate::strategy::Method;

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

/// Reads the header, connects, and looks the table up. Creates nothing.
pub async fn prepare(options: &ImportOptions) -> anyhow::Result<Prepared> {
    let stdin = match is_stdin(&options.file) {
        true => Some(
            blocking(StdinSpool::create)
                .await
                .failing_as(FailureKind::Input)?,
        ),
        false => None,
    };
    let source = SourceSpec {
        path: stdin
            .as_ref()
            .map_or_else(|| options.file.clone(), |spool| spool.path().to_path_buf()),
        sheet: options.sheet.clone(),
        header_row: options.header_row,
        csv: csv_options(options),
        xlsx_reader: options.xlsx_reader,
        xls_reader: options.xls_reader,
    };
    check_not_empty(&source.path, options)
        .await
        .failing_as(FailureKind::Input)?;
    let header = blocking({
        let source = source.clone();
        move || read_header(&source)
    })
    .await
    .failing_as(FailureKind::Input)?;
    let folded_names = fold_header_row(&header.cells)
        .with_context(|| {
            format!(
                "bad header in row {} of {}",
                header.row_number,
                options.shown_file()
            )
        })
        .failing_as(FailureKind::Input)?;
    let table_name = match &options.table {
        Some(table) => TableName::parse(table),
        None => TableName::parse(&default_table_name(&options.named_after())).with_context(|| {
            format!(
                "cannot name a table after {}; pass --table",
                options.shown_file()
            )
        }),
    }
    .failing_as(FailureKind::Input)?;
    let workers = options.workers.map_or_else(available_cores, usize::from);
    let pool = sink::connect(
        options.database_url.as_deref(),
        workers as u32 + 1,
        options.connect_timeout,
    )
    .await
    .failing_as(FailureKind::Database)?;
    let existing = sink::load_table(&pool, &table_name)
        .await
        .failing_as(FailureKind::Database)?;
    if existing.is_none()
        && let Some(schema) = &table_name.schema
        && !sink::schema_exists(&pool, schema)
            .await
            .failing_as(FailureKind::Database)?
    {
        // before the run lock and the ledger, and before a long type inference
        return Err(anyhow::anyhow!(
            "schema {schema:?} of table {table_name} does not exist; create it first with `CREATE SCHEMA {}`, or name an existing schema in --table",
            sink::quote_ident(schema)
        ))
        .failing_as(FailureKind::Input);
    }
    if existing.is_none() && options.create_table {
        // before the run lock and the ledger: a name PostgreSQL would cut fails cleanly
        sink::check_column_names(&folded_names).failing_as(FailureKind::Input)?;
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

/// Refuses a file of 0 bytes with a line that says so (each reader would otherwise call it
/// corrupt, or headerless). `path` is what is read: for standard input, its spooled copy.
/// A path that cannot be looked up, or is no regular file (a pipe), is left to the reader.
async fn check_not_empty(path: &std::path::Path, options: &ImportOptions) -> anyhow::Result<()> {
    let Ok(metadata) = tokio::fs::metadata(path).await else {
        return Ok(());
    };
    if metadata.is_file() && metadata.len() == 0 {
        let what = match is_stdin(&options.file) {
            true => "standard input".to_string(),
            false => shown(&options.shown_file()).to_string(),
        };
        anyhow::bail!("{what} is empty (0 bytes): there is nothing to import");
    }
    Ok(())
}

/// The reader's options: as given, CSV forced for standard input and `.csv` names, and
/// labelled `stdin` when standard input is read, else by the display name (the readers'
/// messages then name the file as the caller's user knows it, never by its path).
fn csv_options(options: &ImportOptions) -> CsvOptions {
    let label = match is_stdin(&options.file) {
        true => Some("stdin".to_string()),
        false => options
            .csv
            .label
            .clone()
            .or_else(|| options.display_name.clone()),
    };
    CsvOptions {
        forced: options.is_csv_input(),
        label,
        ..options.csv.clone()
    }
}

/// Infers one type per header column over every data row of the sheet.
pub async fn infer_types(prepared: &Prepared) -> anyhow::Result<Vec<InferredType>> {
    infer_types_until(prepared, CancellationToken::new()).await
}

/// [`infer_types`] that stops reading once the future is dropped (a signal came first), so
/// that a large sheet is not read to its end for nothing.
pub(crate) async fn infer_types_until_dropped(
    prepared: &Prepared,
) -> anyhow::Result<Vec<InferredType>> {
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
    )
    .failing_as(FailureKind::Input)?;
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
        written: RowCounter::default(),
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
        .context("the file reader panicked")
        .failing_as(FailureKind::Internal)?
}

/// The number of available cores (the default worker count).
pub(crate) fn available_cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

impl RunShape {
    /// The shape a run's flags give, before its job is built (for the stats of a run stopped
    /// before it started).
    pub fn planned(options: &ImportOptions) -> Self {
        let workers = match options.method {
            Method::Sequential => 1,
            Method::Concurrent | Method::Batch | Method::Copy => {
                options.workers.map_or_else(available_cores, usize::from)
            }
        };
        let batch_size = match options.method {
            Method::Sequential | Method::Concurrent => 1,
            Method::Batch | Method::Copy => options.batch_size as usize,
        };
        let file = &options.file;
        let file_name = match &options.display_name {
            Some(name) => name.clone(),
            None => file.file_name().map_or_else(
                || file.display().to_string(),
                |name| name.to_string_lossy().into_owned(),
            ),
        };
        RunShape {
            method: options.method,
            file: file_name,
            table: options
                .table
                .clone()
                .unwrap_or_else(|| default_table_name(&options.named_after())),
            workers,
            batch_size,
            upsert: options.mode == super::mode::Mode::Upsert,
        }
    }

    /// The stats' description of a run: file name, table, effective workers and batch size.
    pub fn new(method: Method, file: String, table: &TableName, job: &ImportJob) -> Self {
        let batch_size = match method {
            // one row per statement
            Method::Sequential | Method::Concurrent => 1,
            Method::Batch | Method::Copy => job.batch_size,
        };
        RunShape {
            method,
            file,
            table: table.to_string(),
            workers: job.workers,
            batch_size,
            // upsert, straight or staged, maps its key columns
            upsert: !job.key_positions.is_empty(),
        }
    }
}
