//! [`ImportOptions`]: what one import is asked to do, as plain data (no clap: the CLI's flags
//! and the service's query parameters are both turned into it).

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use super::mode::Mode;
use crate::sink::ledger::DEFAULT_LEDGER_SCHEMA;
use crate::source::{CsvOptions, XlsReader, XlsxReader, input_name, is_stdin};
use crate::strategy::Method;

/// Whether a run continues after the rows that earlier runs of the same content (same
/// SHA-256 and sheet) into the same table left there when they failed, were cancelled or
/// died, so that a plain re-run puts each row in once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// The default: resume in append mode straight into the table, where loading those rows
    /// again would double them. Upsert and the staged modes (`--atomic`, replace) load every
    /// row.
    Auto,
    /// `--resume`: resume in append or upsert mode; with a staged mode, which leaves no rows
    /// behind to resume after, a usage error.
    Always,
    /// `--no-resume`: load every row again.
    Never,
}

/// Everything one import needs to know, as plain data.
#[derive(Clone)]
pub struct ImportOptions {
    /// The workbook or CSV file (`-` reads standard input).
    pub file: PathBuf,
    /// The name the stats' `file` and messages show; default: `file`'s name.
    pub display_name: Option<String>,
    /// Target table, may be schema-qualified; default: the file's stem, folded.
    pub table: Option<String>,
    /// Sheet name, or 0-based index; default: the first sheet.
    pub sheet: Option<String>,
    /// 1-based row that holds the column names.
    pub header_row: u32,
    /// How rows are written.
    pub method: Method,
    /// Worker connections (concurrent, batch, copy); default: the available cores.
    pub workers: Option<u16>,
    /// Rows per INSERT (batch) or per COPY chunk (copy).
    pub batch_size: u32,
    /// Append, replace or upsert.
    pub mode: Mode,
    /// Key columns of an upsert.
    pub key: Vec<String>,
    /// Load through a staging table and publish in one transaction.
    pub atomic: bool,
    /// Stop once more than this many rows have been rejected.
    pub max_errors: Option<u64>,
    /// Write every rejected row to this CSV file.
    pub rejects: Option<PathBuf>,
    /// Read and convert every row, write nothing to the database.
    pub dry_run: bool,
    /// Create a missing table from the sheet (the CLI's `--no-create` turns it off).
    pub create_table: bool,
    /// Skip the import when this content was already loaded into the table.
    pub skip_unchanged: bool,
    /// Whether to continue after the rows earlier unfinished runs of the same content left
    /// in the table.
    pub resume: Resume,
    /// Wait this long for another run on the same table; `None` fails at once.
    pub wait_lock: Option<Duration>,
    /// replace: how long the swap keeps trying for the table's lock.
    pub swap_timeout: Duration,
    /// Also write the stats JSON to this file.
    pub summary: Option<PathBuf>,
    /// PostgreSQL URL or libpq keyword string; `None`: the `PG*` variables, else the
    /// docker-compose.yml server.
    pub database_url: Option<String>,
    /// Keep retrying a failed first connection for this long.
    pub connect_timeout: Duration,
    /// Schema of the run ledger; `None` records nothing (the run lock is still taken).
    pub ledger_schema: Option<String>,
    /// How a CSV input is read.
    pub csv: CsvOptions,
    /// Reader of .xlsx/.xlsm files.
    pub xlsx_reader: XlsxReader,
    /// Reader of .xls files.
    pub xls_reader: XlsReader,
    /// How many rejected rows [`ImportReport::rejections`] keeps (0 for the CLI).
    pub kept_rejections: usize,
}

impl ImportOptions {
    /// The CLI's defaults for `file`, connecting to `database_url`.
    pub fn new(file: PathBuf, database_url: impl Into<String>) -> Self {
        ImportOptions {
            file,
            display_name: None,
            table: None,
            sheet: None,
            header_row: 1,
            method: Method::Batch,
            workers: None,
            batch_size: 1000,
            mode: Mode::Append,
            key: Vec::new(),
            atomic: false,
            max_errors: None,
            rejects: None,
            dry_run: false,
            create_table: true,
            skip_unchanged: false,
            resume: Resume::Auto,
            wait_lock: None,
            swap_timeout: Duration::from_secs(60),
            summary: None,
            database_url: Some(database_url.into()),
            connect_timeout: Duration::from_secs(30),
            ledger_schema: Some(DEFAULT_LEDGER_SCHEMA.to_string()),
            csv: CsvOptions::default(),
            xlsx_reader: XlsxReader::Fast,
            xls_reader: XlsReader::Fast,
            kept_rejections: 0,
        }
    }
}

impl fmt::Debug for ImportOptions {
    // the database URL may hold a password: never shown
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("ImportOptions")
            .field("file", &self.file)
            .field("display_name", &self.display_name)
            .field("table", &self.table)
            .field("sheet", &self.sheet)
            .field("header_row", &self.header_row)
            .field("method", &self.method)
            .field("workers", &self.workers)
            .field("batch_size", &self.batch_size)
            .field("mode", &self.mode)
            .field("key", &self.key)
            .field("atomic", &self.atomic)
            .field("max_errors", &self.max_errors)
            .field("rejects", &self.rejects)
            .field("dry_run", &self.dry_run)
            .field("create_table", &self.create_table)
            .field("skip_unchanged", &self.skip_unchanged)
            .field("resume", &self.resume)
            .field("wait_lock", &self.wait_lock)
            .field("swap_timeout", &self.swap_timeout)
            .field("summary", &self.summary)
            .field(
                "database_url",
                &self.database_url.as_ref().map(|_| "<redacted>"),
            )
            .field("connect_timeout", &self.connect_timeout)
            .field("ledger_schema", &self.ledger_schema)
            .field("csv", &self.csv)
            .field("xlsx_reader", &self.xlsx_reader)
            .field("xls_reader", &self.xls_reader)
            .field("kept_rejections", &self.kept_rejections)
            .finish()
    }
}

impl ImportOptions {
    /// The file as messages show it: the display name, else the path as given.
    pub(crate) fn shown_file(&self) -> String {
        match &self.display_name {
            Some(name) => name.clone(),
            None => self.file.display().to_string(),
        }
    }

    /// The file's name as the stats' `file` shows it: the display name, else the name
    /// without its directory.
    pub(crate) fn file_name(&self) -> String {
        match &self.display_name {
            Some(name) => name.clone(),
            None => input_name(&self.file),
        }
    }

    /// The path a table without a given name is named after: the display name's, else the
    /// file's.
    pub(crate) fn named_after(&self) -> PathBuf {
        match &self.display_name {
            Some(name) => PathBuf::from(name),
            None => self.file.clone(),
        }
    }

    /// Whether the file is read as CSV: CSV forced, standard input, or a `.csv` name.
    pub(crate) fn is_csv_input(&self) -> bool {
        self.csv.forced
            || is_stdin(&self.file)
            || self
                .file
                .extension()
                .is_some_and(|extension| extension.eq_ignore_ascii_case("csv"))
    }
}
