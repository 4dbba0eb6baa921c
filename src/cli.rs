//! Command-line surface: clap derive types and their defaults, nothing else.
//!
//! Owns the flags of `../shared/CONTRACT.md`; `cmd::*` turns them into work. No I/O here.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// The server of docker-compose.yml; used when neither --database-url nor DATABASE_URL is set.
pub const DEFAULT_DATABASE_URL: &str = "postgres://importer:importer@localhost:5432/importer";

/// Load spreadsheets (xlsx, xlsm, xlsb, xls, ods, csv) into PostgreSQL.
#[derive(Debug, Parser)]
#[command(name = "importer", version, about)]
pub struct Cli {
    /// Log more on stderr (-v debug, -vv trace); RUST_LOG overrides
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

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
    /// List past runs from the run ledger (importer.runs)
    History(HistoryArgs),
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

    /// The contract's name of the method (CLI value and JSON `method`).
    pub fn name(self) -> &'static str {
        match self {
            Method::Sequential => "sequential",
            Method::Concurrent => "concurrent",
            Method::Batch => "batch",
            Method::Copy => "copy",
        }
    }
}

/// Which reader reads .xlsx and .xlsm files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum XlsxReader {
    /// Our streaming reader: shared strings and sheet parsed concurrently
    #[default]
    Fast,
    /// calamine's cell reader, for a file the fast reader gets wrong
    Calamine,
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

    /// PostgreSQL URL; else env DATABASE_URL, else the docker-compose.yml server
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, default_value = DEFAULT_DATABASE_URL, hide_default_value = true)]
    pub database_url: String,

    /// Fail if the table does not exist (default: create it from the sheet)
    #[arg(long)]
    pub no_create: bool,

    /// Keep retrying a failed first connection, with backoff, for this many seconds
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    pub connect_timeout: u64,

    /// Reader of .xlsx/.xlsm files: fast (our own) or calamine
    #[arg(long, value_enum, default_value_t = XlsxReader::Fast)]
    pub xlsx_reader: XlsxReader,
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

    /// Read, map and convert every row, write the rejects file and the stats, but write
    /// nothing to the database (a missing table is not created: its inferred types are logged)
    #[arg(long)]
    pub dry_run: bool,

    /// append: add rows; replace: swap in exactly the file's rows; upsert: update or insert by --key
    #[arg(long, value_enum, default_value_t = Mode::Append)]
    pub mode: Mode,

    /// Key columns for --mode upsert (a unique index or primary key must cover exactly them)
    #[arg(long, value_delimiter = ',', value_name = "COL[,COL]")]
    pub key: Vec<String>,

    /// All or nothing: load through a staging table and publish in one transaction
    #[arg(long)]
    pub atomic: bool,

    /// Exit 0 without importing when this file's content was already loaded into this table
    #[arg(long)]
    pub skip_unchanged: bool,

    /// Wait up to SECONDS for another run on the same table to finish (default: fail at once)
    #[arg(long, value_name = "SECONDS")]
    pub wait_lock: Option<u64>,

    /// Also write the stats JSON to this file
    #[arg(long, value_name = "PATH")]
    pub summary: Option<PathBuf>,
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

    /// PostgreSQL URL; else env DATABASE_URL, else the docker-compose.yml server
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, default_value = DEFAULT_DATABASE_URL, hide_default_value = true)]
    pub database_url: String,

    /// Keep retrying a failed first connection, with backoff, for this many seconds
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    pub connect_timeout: u64,
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
    pub out: PathBuf,
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
