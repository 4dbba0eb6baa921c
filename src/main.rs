//! The `importer` binary: parse flags, set up logging on stderr, run the command, and map
//! its outcome to the exit code (the one place exit codes live).

use std::process::ExitCode;

use clap::Parser;
use importer::cli::{Cli, Command, LogFormat};
use importer::cmd::{self, Outcome};
use importer::progress::{self, DisplaySettings};
use tracing_subscriber::EnvFilter;

// The reader allocates a string per cell and the writers free them on other threads:
// mimalloc is markedly faster than glibc's malloc at that (see BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse(); // usage errors exit 2 (clap)
    let display = DisplaySettings::detect(cli.quiet);
    progress::configure(display);
    init_logging(cli.verbose, display, cli.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            return fail(&anyhow::Error::new(error).context("cannot start the async runtime"));
        }
    };
    let outcome = runtime.block_on(async {
        match cli.command {
            Command::Run(args) => cmd::run::run(args).await,
            Command::Bench(args) => cmd::bench::run(args).await,
            Command::Generate(args) => cmd::generate::run(&args),
            Command::History(args) => cmd::history::run(args).await,
            Command::Completions(args) => cmd::manual::completions(args.shell),
            Command::Man => cmd::manual::man_page(),
        }
    });
    match outcome {
        Ok(Outcome::AllIn) => ExitCode::SUCCESS,
        Ok(Outcome::SomeRejected) => ExitCode::from(3),
        Ok(Outcome::Interrupted(signal)) => ExitCode::from(128 + signal.number()),
        Err(error) => fail(&error),
    }
}

/// Prints the one line a fatal error gets on stderr, and exits 1.
#[allow(clippy::print_stderr)]
fn fail(error: &anyhow::Error) -> ExitCode {
    eprintln!("error: {error:#}");
    ExitCode::from(1)
}

fn init_logging(verbose: u8, display: DisplaySettings, format: LogFormat) {
    let default_level = match verbose {
        0 if display.quiet => "warn",
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(progress::LogWriter)
        .with_ansi(display.color);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
