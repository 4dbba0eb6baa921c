//! The `importer` binary: parse flags, set up logging on stderr, run the command, and map
//! its outcome to the exit code (the one place exit codes live).

use std::process::ExitCode;

use clap::Parser;
use importer::cli::{Cli, Command, LogFormat};
use importer::cmd::{self, Outcome};
use importer::message::final_line;
use tracing_subscriber::EnvFilter;

// The reader allocates a string per cell and the writers free them on other threads:
// mimalloc is markedly faster than glibc's malloc at that (see BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // A panic (in a reader library, say) is turned into the one `error:` line by whoever
    // catches it (join handles, the contained reader, `catch_unwind` below); the default
    // hook's message and backtrace would only come before that line as noise.
    std::panic::set_hook(Box::new(|_| {}));
    let cli = Cli::parse(); // usage errors exit 2 (clap)
    if let Command::ReadCells(args) = &cli.command {
        // the contained reader's child: no logging, no runtime, frames on stdout
        return importer::source::serve_cells(&args.file, args.sheet.as_deref());
    }
    init_logging(cli.verbose, cli.log_format);
    // calamine's formats are read in a child process of this binary (see source::isolated)
    match std::env::current_exe() {
        Ok(executable) => importer::source::contain_calamine_in(executable),
        Err(error) => {
            return fail(&anyhow::Error::new(error).context("cannot find the importer executable"));
        }
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            return fail(&anyhow::Error::new(error).context("cannot start the async runtime"));
        }
    };
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        runtime.block_on(async {
            match cli.command {
                Command::Run(args) => cmd::run::run(args).await,
                Command::Bench(args) => cmd::bench::run(args).await,
                Command::Generate(args) => cmd::generate::run(&args),
                Command::History(args) => cmd::history::run(args).await,
                Command::ReadCells(_) => {
                    unreachable!("read-cells is served before the runtime starts")
                }
            }
        })
    }))
    .unwrap_or_else(|panic| {
        Err(anyhow::anyhow!(
            "internal error (a bug in importer): {}",
            panic_text(panic.as_ref())
        ))
    });
    match outcome {
        Ok(Outcome::AllIn) => ExitCode::SUCCESS,
        Ok(Outcome::SomeRejected) => ExitCode::from(3),
        Ok(Outcome::Interrupted(signal)) => ExitCode::from(128 + signal.number()),
        Err(error) => fail(&error),
    }
}

/// Prints the one line a fatal error gets on stderr, and exits 1. The line passes a last
/// guard (control characters escaped, length capped) in case a library's message quoted
/// something from the file unescaped.
#[allow(clippy::print_stderr)]
fn fail(error: &anyhow::Error) -> ExitCode {
    eprintln!("error: {}", final_line(&format!("{error:#}")));
    ExitCode::from(1)
}

/// The text a panic was raised with.
fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_string()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "a panic without a message".to_string()
    }
}

fn init_logging(verbose: u8, format: LogFormat) {
    let default_level = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
