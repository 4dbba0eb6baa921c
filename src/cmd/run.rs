//! `importer run`: the flags become [`ImportOptions`], Ctrl-C and SIGTERM cancel the
//! import's token, [`import::run`] does the import, and its report is printed on stdout
//! (the stats, or the skip report) and mapped to an [`Outcome`].

use std::time::Duration;

use super::{Outcome, Signal, SignalListener, until_signal};
use crate::cli::{ImportArgs, RunArgs};
use crate::import::{self, ImportControl, ImportOptions, ImportOutcome, Resume};
use crate::source::CsvOptions;
use crate::stats::print_report;

/// Runs `importer run`. Ctrl-C and SIGTERM are listened for from the first moment, so that a
/// signal in any phase (the header read, the lock wait, type inference, the import) ends the
/// run with its stats and its ledger row `cancelled`.
pub async fn run(args: RunArgs) -> anyhow::Result<Outcome> {
    let mut signals = SignalListener::install()?;
    let json = args.format == crate::cli::OutputFormat::Json;
    let control = ImportControl::new();
    let options = options(&args);
    let (result, signal) = until_signal(
        &mut signals,
        &control,
        import::run(options, control.clone()),
    )
    .await;
    let report = match result {
        Ok(report) => report,
        Err(failure) => {
            if let Some(stats) = &failure.stats {
                stats.print(json)?;
            }
            return Err(failure.error);
        }
    };
    match &report.skipped {
        Some(skipped) => print_report(&match json {
            true => serde_json::to_string(skipped)?,
            false => skipped.render_text(),
        }),
        None => report.stats.print(json)?,
    }
    Ok(match report.outcome {
        ImportOutcome::AllIn | ImportOutcome::Skipped => Outcome::AllIn,
        ImportOutcome::SomeRejected => Outcome::SomeRejected,
        // only a signal cancels the CLI's token
        ImportOutcome::Cancelled => Outcome::Interrupted(signal.unwrap_or(Signal::Interrupt)),
    })
}

/// The import the flags ask for.
pub fn options(args: &RunArgs) -> ImportOptions {
    ImportOptions {
        method: args.method.into(),
        mode: args.mode.into(),
        key: args.key.clone(),
        atomic: args.atomic,
        max_errors: args.max_errors,
        rejects: args.rejects.clone(),
        dry_run: args.dry_run,
        skip_unchanged: args.skip_unchanged,
        resume: match (args.resume, args.no_resume) {
            (true, _) => Resume::Always,
            (false, true) => Resume::Never,
            (false, false) => Resume::Auto,
        },
        wait_lock: args.wait_lock.map(Duration::from_secs),
        swap_timeout: Duration::from_secs(args.swap_timeout),
        summary: args.summary.clone(),
        ledger_schema: (!args.no_ledger).then(|| args.ledger.ledger_schema.clone()),
        ..import_options(&args.import)
    }
}

/// The import the flags `run` and `bench` share ask for (the rest as `run`'s defaults).
pub fn import_options(import: &ImportArgs) -> ImportOptions {
    let defaults = CsvOptions::default();
    ImportOptions {
        table: import.table.clone(),
        sheet: import.sheet.clone(),
        header_row: import.header_row,
        workers: import.workers,
        batch_size: import.batch_size,
        create_table: !import.no_create,
        database_url: import.database_url.clone(),
        connect_timeout: Duration::from_secs(import.connect_timeout),
        csv: CsvOptions {
            forced: import.is_csv_input(),
            delimiter: import.csv.delimiter,
            quote: import.csv.quote.unwrap_or(defaults.quote),
            encoding: import.csv.encoding,
            null_string: import.csv.null_string.clone(),
            label: None,
        },
        xlsx_reader: import.xlsx_reader,
        xls_reader: import.xls_reader,
        ..ImportOptions::new(import.file.clone(), String::new())
    }
}
