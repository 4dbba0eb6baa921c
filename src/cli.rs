//! Command-line surface: clap derive types and their defaults, nothing else.
//!
//! Owns the flags of the contract (README's "Commands"); `cmd::*` turns them into work.
//! No I/O here.

use std::path::PathBuf;

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use encoding_rs::Encoding;

use crate::{import, strategy};

pub use crate::sink::conninfo::DEFAULT_DATABASE_URL;
pub use crate::sink::ledger::DEFAULT_LEDGER_SCHEMA;

/// Load spreadsheets (xlsx, xlsm, xlsb, xls, ods, csv) into PostgreSQL.
#[derive(Debug, Parser)]
#[command(name = "importer", version, about)]
pub struct Cli {
    /// Log more on stderr (-v debug, -vv trace); RUST_LOG overrides
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Only warnings and errors on stderr, and no progress; RUST_LOG overrides
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,

    /// Log format on stderr: text for people, json (one object per line) for log shippers
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Import one sheet of a workbook (or a CSV file) into a table
    Run(RunArgs),
    /// Run several methods on one file into a scratch table and compare them
    Bench(BenchArgs),
    /// Write a business-directory workbook for fixtures and benchmarks
    Generate(GenerateArgs),
    /// List past runs from the run ledger (importer.runs, or --ledger-schema's runs)
    History(HistoryArgs),
    /// Serve uploads over HTTP: POST a spreadsheet, get the stats (see README's "Upload service")
    Serve(ServeArgs),
    /// Print a shell completion script on stdout (e.g. importer completions bash > /etc/bash_completion.d/importer)
    Completions(CompletionsArgs),
    /// Print the manual page (roff) on stdout (e.g. importer man | man -l -)
    Man,
    /// Internal: read one sheet with calamine and stream its cells on stdout (the contained
    /// reader `run` starts for .xls, .xlsb and calamine-read .xlsx; not for people)
    #[command(hide = true)]
    ReadCells(ReadCellsArgs),
}

/// `importer completions`.
#[derive(Debug, Clone, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// `importer read-cells` (hidden): the child side of the contained calamine reader.
#[derive(Debug, Clone, Args)]
pub struct ReadCellsArgs {
    /// The workbook
    pub file: PathBuf,

    /// Sheet name, or 0-based index; default: the first sheet
    #[arg(long)]
    pub sheet: Option<String>,
}

/// How rows are written to PostgreSQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Method {
    /// One INSERT per row on one connection
    Sequential,
    /// A bounded pool of workers, one INSERT per row each
    Concurrent,
    /// Workers sending multi-row INSERTs of --batch-size rows
    Batch,
    /// Workers sending COPY FROM STDIN chunks of --batch-size rows
    Copy,
}

impl Method {
    /// Every method, in the order the contract lists them.
    pub const ALL: [Method; 4] = [
        Method::Sequential,
        Method::Concurrent,
        Method::Batch,
        Method::Copy,
    ];
}

impl From<Method> for strategy::Method {
    fn from(method: Method) -> Self {
        match method {
            Method::Sequential => strategy::Method::Sequential,
            Method::Concurrent => strategy::Method::Concurrent,
            Method::Batch => strategy::Method::Batch,
            Method::Copy => strategy::Method::Copy,
        }
    }
}

/// Which reader reads .xlsx and .xlsm files: the core's enum, whose clap values are
/// described here so that the core knows nothing of clap.
pub use crate::source::XlsxReader;

impl ValueEnum for XlsxReader {
    fn value_variants<'a>() -> &'a [Self] {
        &[XlsxReader::Fast, XlsxReader::Calamine]
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        use clap::builder::PossibleValue;
        Some(match self {
            XlsxReader::Fast => PossibleValue::new("fast")
                .help("Our streaming reader: shared strings and sheet parsed concurrently"),
            XlsxReader::Calamine => PossibleValue::new("calamine")
                .help("calamine's cell reader, for a file the fast reader gets wrong"),
        })
    }
}

/// Which reader reads .xls files: the core's enum, whose clap values are described here.
pub use crate::source::XlsReader;

impl ValueEnum for XlsReader {
    fn value_variants<'a>() -> &'a [Self] {
        &[XlsReader::Fast, XlsReader::Calamine]
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        use clap::builder::PossibleValue;
        Some(match self {
            XlsReader::Fast => PossibleValue::new("fast")
                .help("Our streaming BIFF8 reader: rows as the records come, no grid of the sheet"),
            XlsReader::Calamine => PossibleValue::new("calamine").help(
                "calamine's reader (in a contained child process), for a file the fast reader gets wrong",
            ),
        })
    }
}

/// How logs are written on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines
    Text,
    /// One JSON object per line
    Json,
}

/// How the stats are printed on stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// A human table
    Text,
    /// One JSON object
    Json,
}

/// Flags shared by `run` and `bench`: where the rows come from and where they go.
#[derive(Debug, Clone, Args)]
pub struct ImportArgs {
    /// The workbook (.xlsx, .xlsm, .xlsb, .xls, .ods) or .csv file
    pub file: PathBuf,

    /// Target table, may be schema-qualified (sales.orders); default: the file's stem, folded
    #[arg(short, long)]
    pub table: Option<String>,

    /// Sheet name, or 0-based index; default: the first sheet
    #[arg(long)]
    pub sheet: Option<String>,

    /// 1-based row that holds the column names; rows above it are ignored
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub header_row: u32,

    /// Worker connections (concurrent, batch, copy); default: the number of available cores
    #[arg(short, long, value_parser = clap::value_parser!(u16).range(1..))]
    pub workers: Option<u16>,

    /// Rows per INSERT (batch) or per COPY chunk (copy)
    #[arg(short, long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    pub batch_size: u32,

    /// PostgreSQL URL or libpq keyword string; else env DATABASE_URL, else the PG* variables,
    /// else the docker-compose.yml server
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, value_name = "URL")]
    pub database_url: Option<String>,

    /// Fail if the table does not exist (default: create it from the sheet)
    #[arg(long)]
    pub no_create: bool,

    /// Keep retrying a failed first connection, with backoff, for this many seconds
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    pub connect_timeout: u64,

    #[command(flatten)]
    pub csv: CsvArgs,
    /// Reader of .xlsx/.xlsm files: fast (our own) or calamine
    #[arg(long, value_enum, default_value_t = XlsxReader::Fast)]
    pub xlsx_reader: XlsxReader,
    /// Reader of .xls files: fast (our own) or calamine
    #[arg(long, value_enum, default_value_t = XlsReader::Fast)]
    pub xls_reader: XlsReader,
}

/// What a run does to the rows already in the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Add the file's rows
    Append,
    /// The table ends holding exactly the file's good rows, swapped in at once
    Replace,
    /// Update rows whose --key exists, insert the others
    Upsert,
}

impl From<Mode> for import::Mode {
    fn from(mode: Mode) -> Self {
        match mode {
            Mode::Append => import::Mode::Append,
            Mode::Replace => import::Mode::Replace,
            Mode::Upsert => import::Mode::Upsert,
        }
    }
}

/// `importer run`.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// How rows are written
    #[arg(short, long, value_enum, default_value_t = Method::Batch)]
    pub method: Method,

    #[command(flatten)]
    pub import: ImportArgs,

    /// Stop once more than N rows have been rejected (exit 1)
    #[arg(long)]
    pub max_errors: Option<u64>,

    /// Write every rejected row to this CSV file
    #[arg(long)]
    pub rejects: Option<PathBuf>,

    /// How the stats are printed on stdout
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub format: OutputFormat,

    /// Read, map and convert every row and print the stats (and write --rejects), but write
    /// nothing to the database: no rows, no run ledger, no lock. A missing table is not
    /// created: the CREATE TABLE a real run would execute comes with the stats (above the
    /// text table; in the JSON, "create_table")
    #[arg(long)]
    pub dry_run: bool,

    /// append: add rows; replace: swap in exactly the file's rows; upsert: update or insert by --key
    #[arg(long, value_enum, default_value_t = Mode::Append)]
    pub mode: Mode,

    /// Key columns for --mode upsert (a unique index or primary key must cover exactly them)
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "COL[,COL]",
        required_if_eq("mode", "upsert")
    )]
    pub key: Vec<String>,

    /// All or nothing: load through a staging table and publish in one transaction
    #[arg(long)]
    pub atomic: bool,

    /// Exit 0 without importing when this file's content was already loaded into this table
    #[arg(long, conflicts_with_all = ["dry_run", "no_ledger"])]
    pub skip_unchanged: bool,

    /// Continue after the rows that earlier failed, cancelled or dead runs of the same
    /// content put in the table, so each row is in once: the default in append mode; given,
    /// also in upsert mode (implied by --skip-unchanged)
    #[arg(long, conflicts_with_all = ["dry_run", "no_ledger"])]
    pub resume: bool,

    /// Load every row, also those an earlier failed, cancelled or dead run of the same
    /// content already put in the table
    #[arg(long, conflicts_with_all = ["resume", "skip_unchanged"])]
    pub no_resume: bool,

    /// Wait up to SECONDS for another run on the same table to finish (default: fail at once)
    #[arg(long, value_name = "SECONDS", conflicts_with = "dry_run")]
    pub wait_lock: Option<u64>,

    /// --mode replace: keep trying for the table's lock to swap the new rows in for up to
    /// SECONDS (in short waits, so readers never queue long behind it), then fail leaving the
    /// table as it was
    #[arg(long, default_value_t = 60, value_name = "SECONDS")]
    pub swap_timeout: u64,

    /// Also write the stats JSON to this file
    #[arg(long, value_name = "PATH")]
    pub summary: Option<PathBuf>,

    #[command(flatten)]
    pub ledger: LedgerArgs,

    /// Record nothing in the run ledger (the table's run lock is still taken)
    #[arg(long)]
    pub no_ledger: bool,
}

/// Where the run ledger lives, for `run` and `history`.
#[derive(Debug, Clone, Args)]
pub struct LedgerArgs {
    /// Schema of the run ledger table `runs` (created on first use)
    #[arg(long, env = "IMPORTER_LEDGER_SCHEMA", default_value = DEFAULT_LEDGER_SCHEMA, value_name = "NAME", value_parser = parse_schema_name)]
    pub ledger_schema: String,
}

impl RunArgs {
    /// Refuses flag combinations that clap's attributes cannot express, as usage errors
    /// (exit 2, clap's format), before anything is opened or connected.
    pub fn validate(&self) -> Result<(), clap::Error> {
        if !self.key.is_empty() && self.mode != Mode::Upsert {
            return Err(run_usage_error(
                clap::error::ErrorKind::ArgumentConflict,
                format!(
                    "--key is only used with --mode upsert, not with --mode {}",
                    import::Mode::from(self.mode).name()
                ),
            ));
        }
        if self.resume && (self.atomic || self.mode == Mode::Replace) {
            return Err(run_usage_error(
                clap::error::ErrorKind::ArgumentConflict,
                "--resume cannot be combined with --atomic or --mode replace: those runs leave no rows behind to resume from".to_string(),
            ));
        }
        if let (Some(summary), Some(rejects)) = (&self.summary, &self.rejects)
            && std::path::absolute(summary).ok() == std::path::absolute(rejects).ok()
        {
            return Err(run_usage_error(
                clap::error::ErrorKind::ArgumentConflict,
                format!(
                    "--summary and --rejects name the same file {}; give each its own",
                    summary.display()
                ),
            ));
        }
        Ok(())
    }
}

/// A usage error of `importer run`, rendered by clap with the subcommand's usage line.
fn run_usage_error(kind: clap::error::ErrorKind, message: String) -> clap::Error {
    let mut command = <Cli as clap::CommandFactory>::command();
    command.build();
    match command.find_subcommand_mut("run") {
        Some(run) => run.error(kind, message),
        None => command.error(kind, message),
    }
}

fn parse_schema_name(text: &str) -> Result<String, String> {
    if text.is_empty() {
        Err("a schema name cannot be empty".to_string())
    } else {
        Ok(text.to_string())
    }
}

/// `importer history`.
#[derive(Debug, Clone, Args)]
pub struct HistoryArgs {
    /// Only runs into this table
    #[arg(short, long)]
    pub table: Option<String>,

    /// How the runs are printed on stdout
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub format: OutputFormat,

    /// At most this many runs, newest first
    #[arg(long, default_value_t = 20)]
    pub limit: u32,

    /// PostgreSQL URL or libpq keyword string; else env DATABASE_URL, else the PG* variables,
    /// else the docker-compose.yml server
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, value_name = "URL")]
    pub database_url: Option<String>,

    /// Keep retrying a failed first connection, with backoff, for this many seconds
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    pub connect_timeout: u64,

    #[command(flatten)]
    pub ledger: LedgerArgs,
}

/// `importer serve`: where it listens, its limits, and the run options every upload starts
/// from (a request's query may override the method, table, sheet, mode, key and atomic).
/// Without `--table` or `--allow-table` no upload could go anywhere: a usage error.
#[derive(Debug, Clone, Args)]
#[command(group(clap::ArgGroup::new("target_tables").args(["table", "allow_tables"]).required(true).multiple(true)))]
pub struct ServeArgs {
    /// Address to listen on; port 0 picks a free one (logged as `listening on http://ADDR`).
    /// Beyond loopback a token is required (IMPORTER_TOKEN or --token-file)
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "ADDR:PORT")]
    pub listen: std::net::SocketAddr,

    /// Directory for the uploads being imported and the rejects files kept for download
    #[arg(long, default_value = "uploads", value_name = "DIR")]
    pub uploads: PathBuf,

    /// Largest upload accepted, in MiB (larger ones are cut off with 413 while streaming)
    #[arg(long, default_value_t = 100, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1_048_576))]
    pub max_upload_mb: u64,

    /// Imports running at once; further uploads get 429 until one finishes
    #[arg(long, default_value_t = 4, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub max_concurrent_imports: u32,

    /// Tables a request may name (`*` matches any run of characters, e.g. `staging.*`);
    /// repeatable; default: only --table
    #[arg(long = "allow-table", value_name = "PATTERN")]
    pub allow_tables: Vec<String>,

    /// On SIGTERM or Ctrl-C, let running imports finish for this long, then cancel them
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    pub shutdown_grace: u64,

    /// Read the bearer token from this file (first line) instead of env IMPORTER_TOKEN
    #[arg(long, value_name = "PATH")]
    pub token_file: Option<PathBuf>,

    /// Longest a request may take, upload and import included, before it gets 408
    #[arg(long, default_value_t = 3600, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    pub request_timeout: u64,

    /// Longest a client may take to send a request's headers (also between the requests of a
    /// kept-alive connection), then its connection is closed
    #[arg(long, default_value_t = crate::serve::HEADER_TIMEOUT.as_secs(), value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub header_timeout: u64,

    /// Most connections open at once, lowered to what the open-file limit leaves; one more
    /// closes the oldest connection between requests, or gets 503 when all are in a request
    #[arg(long, default_value_t = crate::serve::MAX_CONNECTIONS, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,

    /// Rejects files kept for GET /imports/{id}/rejects.csv: the newest N
    #[arg(long, default_value_t = 100, value_name = "N")]
    pub keep_rejects: usize,

    /// ... and none older than this many hours
    #[arg(long, default_value_t = 24, value_name = "HOURS")]
    pub keep_rejects_hours: u64,

    /// An upload into a table another import is loading waits up to SECONDS for it, then
    /// gets 409 (0: 409 at once)
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    pub wait_lock: u64,

    /// Default method of an upload (?method= overrides it)
    #[arg(short, long, value_enum, default_value_t = Method::Batch)]
    pub method: Method,

    /// Default target table (?table= overrides it, within --allow-table)
    #[arg(short, long)]
    pub table: Option<String>,

    /// Default mode (?mode= overrides it)
    #[arg(long, value_enum, default_value_t = Mode::Append)]
    pub mode: Mode,

    /// Worker connections per import (concurrent, batch, copy); default: the available cores
    #[arg(short, long, value_parser = clap::value_parser!(u16).range(1..))]
    pub workers: Option<u16>,

    /// Rows per INSERT (batch) or per COPY chunk (copy)
    #[arg(short, long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    pub batch_size: u32,

    /// 1-based row that holds the column names (?header_row= overrides it)
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub header_row: u32,

    /// Stop an import once more than N rows have been rejected
    #[arg(long)]
    pub max_errors: Option<u64>,

    /// Fail an upload whose table does not exist (default: create it from the sheet)
    #[arg(long)]
    pub no_create: bool,

    /// PostgreSQL URL or libpq keyword string; else env DATABASE_URL, else the docker-compose.yml server
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, value_name = "URL")]
    pub database_url: Option<String>,

    /// Keep retrying a failed first connection, with backoff, for this many seconds
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    pub connect_timeout: u64,

    /// Reader of .xlsx/.xlsm files: fast (our own) or calamine
    #[arg(long, value_enum, default_value_t = XlsxReader::Fast)]
    pub xlsx_reader: XlsxReader,

    #[command(flatten)]
    pub ledger: LedgerArgs,
}

/// How `importer bench` prints its comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BenchFormat {
    /// A human table
    Text,
    /// One JSON object (for CI comparisons)
    Json,
    /// A Markdown table
    Markdown,
}

/// `importer bench`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Methods to compare, comma-separated; default: all four
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = Method::ALL)]
    pub methods: Vec<Method>,

    /// Runs per method; the median is reported
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub repeat: u32,

    /// How the comparison is printed on stdout
    #[arg(long, value_enum, default_value_t = BenchFormat::Text)]
    pub format: BenchFormat,

    #[command(flatten)]
    pub import: ImportArgs,
}

/// `importer generate`.
#[derive(Debug, Clone, Args)]
pub struct GenerateArgs {
    /// Data rows to write (the header row comes on top)
    #[arg(long)]
    pub rows: u64,

    /// Seed: the same seed writes the same workbook
    #[arg(long, default_value_t = 42)]
    pub seed: u64,

    /// Fraction of rows made invalid for fixtures/businesses.sql (an empty Name)
    #[arg(long, default_value_t = 0.0, value_parser = parse_fraction)]
    pub bad_rows: f64,

    /// Write strings inline in each cell instead of a shared-string table (.xlsx only)
    #[arg(long)]
    pub inline_strings: bool,

    /// Output workbook (.xlsx) or CSV (.csv) path
    #[arg(value_parser = parse_generate_out)]
    pub out: PathBuf,
}

/// `generate`'s OUT: .xlsx or .csv, refused (a usage error, before anything is written)
/// otherwise, rather than writing one format under another's name.
fn parse_generate_out(text: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(text);
    let extension = path
        .extension()
        .map(|extension| extension.to_string_lossy().to_ascii_lowercase());
    match extension.as_deref() {
        Some("xlsx" | "csv") => Ok(path),
        Some("ods") => Err(
            "generate writes .xlsx or .csv, not .ods; write .xlsx and convert it (soffice --headless --convert-to ods FILE.xlsx)"
                .to_string(),
        ),
        _ => Err("OUT must end in .xlsx or .csv".to_string()),
    }
}

fn parse_fraction(text: &str) -> Result<f64, String> {
    let fraction: f64 = text
        .parse()
        .map_err(|_| format!("not a number: {text:?}"))?;
    if (0.0..=1.0).contains(&fraction) {
        Ok(fraction)
    } else {
        Err(format!("must be between 0 and 1, got {fraction}"))
    }
}

/// A format to read the input as, whatever its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum InputFormat {
    /// Comma-separated (or --delimiter) text with a header line
    Csv,
}

/// How a CSV input is read, after psql's `\copy` and csvkit. Usage errors with a workbook.
#[derive(Debug, Clone, Default, Args)]
pub struct CsvArgs {
    /// Read FILE as CSV whatever its name (standard input, `-`, always is)
    #[arg(long, help_heading = "CSV input", value_enum, value_name = "FORMAT")]
    pub input_format: Option<InputFormat>,

    /// Field delimiter: one ASCII character, or `\t` / `tab`; default: sniffed among , ; tab |
    #[arg(long, help_heading = "CSV input", value_parser = parse_delimiter, value_name = "CHAR")]
    pub delimiter: Option<u8>,

    /// Quote character [default: "]
    #[arg(long, help_heading = "CSV input", value_parser = parse_quote, value_name = "CHAR")]
    pub quote: Option<u8>,

    /// The file's encoding: utf-8, windows-1252, latin1, utf-16le, utf-16be, utf-16, ... (a BOM wins) [default: utf-8]
    #[arg(long, help_heading = "CSV input", value_parser = parse_encoding, value_name = "LABEL")]
    pub encoding: Option<&'static Encoding>,

    /// Fields equal to TEXT are NULL (like \copy's NULL); an empty field is NULL anyway
    #[arg(long, help_heading = "CSV input", value_name = "TEXT")]
    pub null_string: Option<String>,
}

impl CsvArgs {
    /// The first CSV-only flag given, by its name on the command line.
    fn first_given(&self) -> Option<&'static str> {
        [
            (self.delimiter.is_some(), "--delimiter"),
            (self.quote.is_some(), "--quote"),
            (self.encoding.is_some(), "--encoding"),
            (self.null_string.is_some(), "--null-string"),
        ]
        .into_iter()
        .find_map(|(given, flag)| given.then_some(flag))
    }
}

impl ImportArgs {
    /// Whether FILE is read as CSV: a `.csv` name, standard input, or `--input-format csv`.
    pub fn is_csv_input(&self) -> bool {
        self.csv.input_format == Some(InputFormat::Csv)
            || crate::source::is_stdin(&self.file)
            || self
                .file
                .extension()
                .is_some_and(|extension| extension.eq_ignore_ascii_case("csv"))
    }

    /// What is wrong with these flags together, that clap cannot tell.
    fn usage_error(&self) -> Option<String> {
        if crate::source::is_stdin(&self.file) && self.table.is_none() {
            return Some(format!(
                "reading standard input ({}) needs --table: there is no file name to name the table after",
                self.file.display()
            ));
        }
        if let Some(flag) = self.csv.first_given()
            && !self.is_csv_input()
        {
            return Some(format!(
                "{flag} applies to CSV input only, and {} is not a .csv file; pass --input-format csv to read it as CSV",
                self.file.display()
            ));
        }
        let quote = self.csv.quote.unwrap_or(b'"');
        if self.csv.delimiter == Some(quote) {
            return Some(format!(
                "--delimiter and --quote are both {:?}; they must differ",
                quote as char
            ));
        }
        None
    }
}

impl Cli {
    /// Checks what clap cannot: flags that contradict each other or the input. The error
    /// exits 2, as clap's own usage errors do.
    pub fn check_usage(&self) -> Result<(), clap::Error> {
        let import = match &self.command {
            Command::Run(args) => {
                args.validate()?;
                &args.import
            }
            Command::Bench(args) => &args.import,
            Command::Generate(_)
            | Command::History(_)
            | Command::Serve(_)
            | Command::Completions(_)
            | Command::Man
            | Command::ReadCells(_) => {
                return Ok(());
            }
        };
        match import.usage_error() {
            Some(message) => {
                Err(Cli::command().error(clap::error::ErrorKind::ArgumentConflict, message))
            }
            None => Ok(()),
        }
    }
}

/// `--delimiter`: one ASCII character other than a line end or the quote; `\t` and `tab`
/// are the tab.
fn parse_delimiter(text: &str) -> Result<u8, String> {
    match text {
        "\\t" | "tab" | "TAB" => Ok(b'\t'),
        _ => parse_ascii_char(text),
    }
}

/// `--quote`: one ASCII character other than a line end.
fn parse_quote(text: &str) -> Result<u8, String> {
    parse_ascii_char(text)
}

fn parse_ascii_char(text: &str) -> Result<u8, String> {
    match text.as_bytes() {
        [b'\n' | b'\r'] => Err("a line end cannot be used".to_string()),
        [byte] if byte.is_ascii() => Ok(*byte),
        _ => Err(format!("expected one ASCII character, got {text:?}")),
    }
}

/// `--encoding`: a WHATWG label (what browsers accept: `latin1` is windows-1252).
fn parse_encoding(label: &str) -> Result<&'static Encoding, String> {
    match Encoding::for_label(label.trim().as_bytes()) {
        Some(encoding) if encoding != encoding_rs::REPLACEMENT => Ok(encoding),
        _ => Err(format!(
            "unknown encoding {label:?} (try utf-8, windows-1252, latin1, iso-8859-15, utf-16le, utf-16be or utf-16)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_flag_values_parse_like_copy_options() {
        assert_eq!(parse_delimiter("\\t"), Ok(b'\t'));
        assert_eq!(parse_delimiter("tab"), Ok(b'\t'));
        assert_eq!(parse_delimiter("\t"), Ok(b'\t'));
        assert_eq!(parse_delimiter(";"), Ok(b';'));
        assert!(parse_delimiter(";;").is_err());
        assert!(parse_delimiter("\n").is_err());
        assert!(parse_quote("é").is_err());
        assert_eq!(parse_encoding("latin1"), Ok(encoding_rs::WINDOWS_1252));
        assert_eq!(parse_encoding("UTF-16"), Ok(encoding_rs::UTF_16LE));
        assert!(parse_encoding("klingon").is_err());
        assert!(parse_encoding("iso-2022-kr").is_err());
    }
}
