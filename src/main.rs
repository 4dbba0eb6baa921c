//! The `importer` binary: parse flags, set up logging on stderr, run the command, and map
//! its outcome to the exit code (the one place exit codes live).

use std::process::ExitCode;

use clap::Parser;
use importer::cli::{Cli, Command, LogFormat};
use importer::cmd::{self, Outcome};
use importer::message::final_line;
use importer::progress::{self, DisplaySettings};
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
    if let Err(error) = cli.check_usage() {
        error.exit(); // 2, as clap's own: before any file, connection or ledger row
    }
    let log_format = cli.log_format;
    let display = DisplaySettings::detect(cli.quiet);
    progress::configure(display);
    init_logging(cli.verbose, display, log_format);
    // calamine's formats are read in a child process of this binary (see source::isolated)
    match std::env::current_exe() {
        Ok(executable) => importer::source::contain_calamine_in(executable),
        Err(error) => {
            let error = anyhow::Error::new(error).context("cannot find the importer executable");
            return fail(&error, log_format);
        }
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            return fail(
                &anyhow::Error::new(error).context("cannot start the async runtime"),
                log_format,
            );
        }
    };
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        runtime.block_on(async {
            match cli.command {
                Command::Run(args) => cmd::run::run(args).await,
                Command::Bench(args) => cmd::bench::run(args).await,
                Command::Generate(args) => cmd::generate::run(&args),
                Command::History(args) => cmd::history::run(args).await,
                Command::Serve(args) => cmd::serve::run(args).await,
                Command::Completions(args) => cmd::manual::completions(args.shell),
                Command::Man => cmd::manual::man_page(),
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
    // a file reader stopped by a signal may still be inside a read: everything that counts
    // has been awaited, so the process does not wait for it
    runtime.shutdown_background();
    match outcome {
        Ok(Outcome::AllIn) => ExitCode::SUCCESS,
        Ok(Outcome::SomeRejected) => ExitCode::from(3),
        Ok(Outcome::Interrupted(signal)) => ExitCode::from(128 + signal.number()),
        Err(error) => fail(&error, log_format),
    }
}

/// Prints the one line a fatal error gets on stderr, and exits 1: `error: ...` for text
/// logs, or one object shaped like tracing's JSON lines for `--log-format json`. It is
/// printed whatever `RUST_LOG` says, since it is the run's verdict rather than a log line.
/// The line passes a last guard (control characters escaped, length capped) in case a
/// library's message quoted something from the file unescaped.
#[allow(clippy::print_stderr)]
fn fail(error: &anyhow::Error, log_format: LogFormat) -> ExitCode {
    let message = final_line(&error_line(error));
    match log_format {
        LogFormat::Text => eprintln!("error: {message}"),
        LogFormat::Json => {
            let line = ErrorLine {
                timestamp: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                level: "ERROR",
                fields: ErrorFields { message },
                target: "importer",
            };
            match serde_json::to_string(&line) {
                Ok(json) => eprintln!("{json}"),
                // a String always serialises; never lose the error, though
                Err(_) => eprintln!("error: {}", line.fields.message),
            }
        }
    }
    ExitCode::from(1)
}

/// The fatal error as one JSON line, in the field order of tracing's JSON lines.
#[derive(serde::Serialize)]
struct ErrorLine {
    timestamp: String,
    level: &'static str,
    fields: ErrorFields,
    target: &'static str,
}

#[derive(serde::Serialize)]
struct ErrorFields {
    message: String,
}

/// The error and its causes on one line, joined by ": " as `{:#}` does, but without a cause
/// that only repeats the text before it (sqlx wraps a server error in one that quotes it).
fn error_line(error: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if parts
            .last()
            .is_some_and(|previous| previous.ends_with(&text))
        {
            continue;
        }
        parts.push(text);
    }
    // one line, whatever a message holds (a server's DETAIL, a path with a newline)
    parts.join(": ").replace(['\n', '\r'], " ")
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

#[cfg(test)]
mod tests {
    use super::*;

    /// An error whose text quotes its source's, as sqlx's database errors do.
    #[derive(Debug)]
    struct Quoting(std::io::Error);

    impl std::fmt::Display for Quoting {
        fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(formatter, "error returned from database: {}", self.0)
        }
    }

    impl std::error::Error for Quoting {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn the_error_line_joins_causes_once_each_on_one_line() {
        let quoting = Quoting(std::io::Error::other("duplicate key value"));
        let error = anyhow::Error::new(quoting).context("publishing failed");
        assert_eq!(
            error_line(&error),
            "publishing failed: error returned from database: duplicate key value"
        );
        let multiline = anyhow::anyhow!("first\nsecond").context("outer");
        assert_eq!(error_line(&multiline), "outer: first second");
    }
}
