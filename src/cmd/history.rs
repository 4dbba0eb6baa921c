//! `importer history`: lists past runs from the run ledger (`importer.runs`, or the `runs`
//! of `--ledger-schema`; see `sink::ledger`), newest first, as a table like the stats' or as
//! one JSON array. A database without a ledger has no runs yet: the list is empty, and
//! nothing is created.

use std::time::Duration;

use super::Outcome;
use crate::cli::{HistoryArgs, OutputFormat};
use crate::sink::ledger::{self, Ledger, RunEntry};
use crate::sink::{self, TableName, lock};
use crate::stats::{print_report, render_table};

/// Characters of an error message shown in the text table (the JSON has all of it).
const ERROR_PREVIEW_CHARS: usize = 60;

/// Runs `importer history`.
pub async fn run(args: HistoryArgs) -> anyhow::Result<Outcome> {
    let connect_timeout = Duration::from_secs(args.connect_timeout);
    let pool = sink::connect(args.database_url.as_deref(), 1, connect_timeout).await?;
    let table = match &args.table {
        // the same table a run with `--table T` would lock and record
        Some(table) => Some(lock::qualify_table(&pool, &TableName::parse(table)?).await?),
        None => None,
    };
    let ledger = Ledger::new(&args.ledger.ledger_schema);
    let runs = ledger::list_runs(&pool, &ledger, table.as_ref(), args.limit).await?;
    pool.close().await;
    let report = match args.format {
        OutputFormat::Text => render_runs(&runs),
        OutputFormat::Json => serde_json::to_string(&runs)?,
    };
    print_report(&report);
    Ok(Outcome::AllIn)
}

/// The text table: one line per run, the stats' counts when the run printed them.
fn render_runs(runs: &[RunEntry]) -> String {
    let header = [
        "Run", "Started", "Table", "File", "Method", "Mode", "Outcome", "Rows", "Inserted",
        "Rejected", "Time", "Note",
    ];
    let rows: Vec<Vec<String>> = runs
        .iter()
        .map(|run| {
            let count = |field: &str| {
                run.stats
                    .as_ref()
                    .and_then(|stats| stats.get(field))
                    .map_or_else(String::new, ToString::to_string)
            };
            vec![
                run.id.to_string(),
                // ISO 8601 "2025-01-31T03:00:00.123+00:00" -> "2025-01-31 03:00:00"
                run.started_at
                    .replacen('T', " ", 1)
                    .chars()
                    .take(19)
                    .collect(),
                run.table.clone(),
                file_name(&run.file_path),
                run.method.clone(),
                run.mode.clone(),
                run.outcome.clone(),
                count("total_records"),
                count("success_count"),
                count("error_count"),
                run.duration_seconds
                    .map_or_else(String::new, |seconds| format!("{seconds:.2}s")),
                note(run),
            ]
        })
        .collect();
    render_table(&header, &rows)
}

/// What the text table says beside the outcome: the run a skipped one defers to, or the
/// start of the error.
fn note(run: &RunEntry) -> String {
    if let Some(previous) = run.previous_run_id {
        return format!("loaded by run {previous}");
    }
    let Some(error) = &run.error else {
        return String::new();
    };
    let preview: String = error.chars().take(ERROR_PREVIEW_CHARS).collect();
    if preview.len() < error.len() {
        format!("{preview}...")
    } else {
        preview
    }
}

/// The last component of a path as the ledger stored it.
fn file_name(path: &str) -> String {
    std::path::Path::new(path).file_name().map_or_else(
        || path.to_string(),
        |name| name.to_string_lossy().into_owned(),
    )
}
