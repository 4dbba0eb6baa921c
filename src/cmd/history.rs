//! `importer history`: lists past runs from the run ledger (`importer.runs`, or the `runs`
//! of `--ledger-schema`; see `sink::ledger`), newest first, as a table like the stats' or as
//! one JSON array. A database without a ledger has no runs yet: the list is empty, and
//! nothing is created.

use std::time::Duration;

use super::Outcome;
use crate::cli::{HistoryArgs, OutputFormat};
use crate::sink::ledger::{self, Ledger, RunEntry, RunOutcome};
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
        "Run",
        "Started (UTC)",
        "Table",
        "File",
        "Method",
        "Mode",
        "Outcome",
        "Rows",
        "Inserted",
        "Rejected",
        "Time",
        "Note",
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
                utc_time(&run.started_at),
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

/// A time of the ledger (ISO 8601 in the server's time zone, `2025-01-31T04:00:00.123+01:00`)
/// in UTC to the second (`2025-01-31 03:00:00`), so that the column means one thing whatever
/// the server's `TimeZone`; as stored if it cannot be read.
fn utc_time(iso: &str) -> String {
    match chrono::DateTime::parse_from_rfc3339(iso) {
        Ok(time) => time
            .with_timezone(&chrono::Utc)
            .format("%Y-%m-%d %H:%M:%S")
            .to_string(),
        Err(_) => iso.to_string(),
    }
}

/// What the text table says beside the outcome: the run a skipped one defers to, or the one
/// a resumed run continues, then the start of the error.
fn note(run: &RunEntry) -> String {
    let previous =
        run.previous_run_id
            .map(|previous| match run.outcome == RunOutcome::Skipped.name() {
                true => format!("loaded by run {previous}"),
                false => format!("resumes run {previous}"),
            });
    let error = run.error.as_ref().map(|error| {
        let preview: String = error.chars().take(ERROR_PREVIEW_CHARS).collect();
        if preview.len() < error.len() {
            format!("{preview}...")
        } else {
            preview
        }
    });
    [previous, error]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join("; ")
}

/// The last component of a path as the ledger stored it.
fn file_name(path: &str) -> String {
    std::path::Path::new(path).file_name().map_or_else(
        || path.to_string(),
        |name| name.to_string_lossy().into_owned(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(outcome: &str, previous_run_id: Option<i64>, error: Option<&str>) -> RunEntry {
        RunEntry {
            id: 2,
            file_path: "/data/f.csv".into(),
            file_size: 1,
            sha256: "x".into(),
            sheet: "f.csv".into(),
            table: "public.t".into(),
            schema_and_name: ("public".into(), "t".into()),
            method: "batch".into(),
            mode: "append".into(),
            started_at: "2025-01-31T04:00:00.123+01:00".into(),
            finished_at: None,
            duration_seconds: None,
            outcome: outcome.into(),
            error: error.map(str::to_string),
            stats: None,
            previous_run_id,
        }
    }

    #[test]
    fn times_are_shown_in_utc_whatever_the_server_time_zone() {
        assert_eq!(
            utc_time("2025-01-31T04:00:00.123+01:00"),
            "2025-01-31 03:00:00"
        );
        assert_eq!(utc_time("2025-01-31T03:00:00+00:00"), "2025-01-31 03:00:00");
        assert_eq!(utc_time("not a time"), "not a time");
        let text = render_runs(&[entry("succeeded", None, None)]);
        assert!(text.starts_with("| Run | Started (UTC) "), "{text}");
        assert!(text.contains("| 2025-01-31 03:00:00 |"), "{text}");
    }

    #[test]
    fn the_note_tells_a_skipped_run_from_a_resumed_one() {
        assert_eq!(note(&entry("skipped", Some(1), None)), "loaded by run 1");
        assert_eq!(note(&entry("succeeded", Some(1), None)), "resumes run 1");
        assert_eq!(
            note(&entry("cancelled", Some(1), Some("stopped by SIGINT"))),
            "resumes run 1; stopped by SIGINT"
        );
        assert_eq!(note(&entry("failed", None, Some("boom"))), "boom");
        assert_eq!(note(&entry("succeeded", None, None)), "");
    }
}
