//! Counting and reporting: [`Tally`] is what each worker counts, [`ImportStats`] the
//! contract's JSON object, and the only code that prints to stdout.
//!
//! Every row read is either in the table (`success_count`) or rejected (`error_count`);
//! `ImportStats::new` is where that is checked, once.

use std::ops::AddAssign;
use std::time::Duration;

use serde::Serialize;

use crate::strategy::Method;

/// What one part of a run counted. Merged with `+=`; never shared between tasks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Data rows read from the sheet (counted by the reader only).
    pub rows_read: u64,
    /// Rows now in the table because of this run.
    pub success_count: u64,
    /// Rows rejected, by conversion or by the server.
    pub error_count: u64,
}

impl AddAssign for Tally {
    fn add_assign(&mut self, other: Tally) {
        self.rows_read += other.rows_read;
        self.success_count += other.success_count;
        self.error_count += other.error_count;
    }
}

impl Tally {
    /// Rows that reached an outcome (in the table or rejected).
    pub fn processed(&self) -> u64 {
        self.success_count + self.error_count
    }
}

/// The stats of one run, field for field the contract's JSON.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ImportStats {
    pub method: String,
    pub file: String,
    pub table: String,
    pub total_records: u64,
    pub success_count: u64,
    pub error_count: u64,
    pub duration_seconds: f64,
    pub records_per_second: f64,
    pub workers: usize,
    pub batch_size: usize,
    /// `--dry-run`: nothing was written; `success_count` counts the rows that would be.
    /// Absent from the JSON of real runs, whose object is exactly the contract's.
    #[serde(skip_serializing_if = "is_false")]
    pub dry_run: bool,
    /// A dry run into a missing table: the CREATE TABLE statement a real run would execute.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub create_table: Option<String>,
    /// `--mode upsert`: `success_count` counts rows inserted or updated, so the text table
    /// says "Written". Never in the JSON, which is the contract's.
    #[serde(skip)]
    pub upsert: bool,
}

fn is_false(value: &bool) -> bool {
    !*value
}

/// How the run was set up, for the stats.
#[derive(Debug, Clone)]
pub struct RunShape {
    pub method: Method,
    pub file: String,
    pub table: String,
    pub workers: usize,
    pub batch_size: usize,
    /// Whether the run upserts (its rows are inserted or updated).
    pub upsert: bool,
}

impl ImportStats {
    /// Builds the stats. `total_records` counts the rows that reached an outcome, so that
    /// success + error == total holds even when a run stops early; a complete run must have
    /// processed every row it read, or the counting is broken.
    pub fn new(
        shape: &RunShape,
        tally: Tally,
        elapsed: Duration,
        complete: bool,
    ) -> anyhow::Result<Self> {
        if complete && tally.processed() != tally.rows_read {
            anyhow::bail!(
                "internal error: {} rows read but {} in and {} rejected",
                tally.rows_read,
                tally.success_count,
                tally.error_count
            );
        }
        let duration_seconds = elapsed.as_secs_f64();
        let records_per_second = if duration_seconds > 0.0 {
            tally.success_count as f64 / duration_seconds
        } else {
            0.0
        };
        Ok(ImportStats {
            method: shape.method.name().to_string(),
            file: shape.file.clone(),
            table: shape.table.clone(),
            total_records: tally.processed(),
            success_count: tally.success_count,
            error_count: tally.error_count,
            duration_seconds: round_to(duration_seconds, 3),
            records_per_second: round_to(records_per_second, 1),
            workers: shape.workers,
            batch_size: shape.batch_size,
            dry_run: false,
            create_table: None,
            upsert: shape.upsert,
        })
    }

    /// Marks the stats as those of a dry run, with the CREATE TABLE statement it did not run
    /// (when the table is missing).
    pub fn into_dry_run(self, create_table: Option<String>) -> Self {
        ImportStats {
            dry_run: true,
            create_table,
            ..self
        }
    }

    /// The human table of `--format text`; a dry run says what it would have done, with the
    /// CREATE TABLE statement above the table.
    pub fn render_text(&self) -> String {
        // contract: append's table says "Inserted"; upsert's rows may be updates
        let written = match (self.dry_run, self.upsert) {
            (false, false) => "Inserted",
            (false, true) => "Written",
            (true, false) => "Would insert",
            (true, true) => "Would write",
        };
        let header = ["Method", "Rows", written, "Rejected", "Time", "Records/sec"];
        let row = [
            self.method.clone(),
            self.total_records.to_string(),
            self.success_count.to_string(),
            self.error_count.to_string(),
            format!("{:.2}s", self.duration_seconds),
            format!("{:.0}", self.records_per_second),
        ];
        let table = render_table(&header, &[row.to_vec()]);
        match &self.create_table {
            Some(statement) => format!(
                "-- dry run: the table does not exist; a real run would execute\n{statement};\n\n{table}"
            ),
            None => table,
        }
    }

    /// Prints the stats on stdout (the text table, or with `json` one JSON object), the one
    /// place `run` writes there.
    pub fn print(&self, json: bool) -> anyhow::Result<()> {
        let text = match json {
            false => self.render_text(),
            true => serde_json::to_string(self)?,
        };
        print_report(&text);
        Ok(())
    }
}

/// Rounds for display in JSON (the contract's example shows 0.42 s and 23779.1 rows/s).
fn round_to(value: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (value * scale).round() / scale
}

/// A Markdown-style table whose columns are padded to their widest cell.
pub fn render_table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|cell| cell.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        format!("| {} |", padded.join(" | "))
    };
    let mut lines = vec![line(header.iter().map(|cell| cell.to_string()).collect())];
    lines.push(format!(
        "|{}|",
        widths
            .iter()
            .map(|width| "-".repeat(width + 2))
            .collect::<Vec<_>>()
            .join("|")
    ));
    lines.extend(rows.iter().map(|row| line(row.clone())));
    lines.join("\n")
}

/// Writes a report to stdout: the only `println!` of the crate (clippy print_stdout).
#[allow(clippy::print_stdout)]
pub fn print_report(text: &str) {
    println!("{text}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_serialise_with_the_contract_field_names() {
        let shape = RunShape {
            method: Method::Batch,
            file: "businesses.xlsx".into(),
            table: "businesses".into(),
            workers: 2,
            batch_size: 1000,
            upsert: false,
        };
        let tally = Tally {
            rows_read: 10_000,
            success_count: 9_987,
            error_count: 13,
        };
        let stats = ImportStats::new(&shape, tally, Duration::from_millis(420), true).unwrap();
        let json = serde_json::to_string(&stats).unwrap();
        assert_eq!(
            json,
            r#"{"method":"batch","file":"businesses.xlsx","table":"businesses","total_records":10000,"success_count":9987,"error_count":13,"duration_seconds":0.42,"records_per_second":23778.6,"workers":2,"batch_size":1000}"#
        );
    }

    #[test]
    fn a_complete_run_must_account_for_every_row() {
        let shape = RunShape {
            method: Method::Copy,
            file: "f".into(),
            table: "t".into(),
            workers: 1,
            batch_size: 1,
            upsert: false,
        };
        let lost = Tally {
            rows_read: 3,
            success_count: 1,
            error_count: 1,
        };
        assert!(ImportStats::new(&shape, lost, Duration::ZERO, true).is_err());
        let stopped = ImportStats::new(&shape, lost, Duration::ZERO, false).unwrap();
        assert_eq!(stopped.total_records, 2);
    }

    #[test]
    fn dry_run_stats_say_so_in_json_and_text_and_real_runs_do_not() {
        let shape = RunShape {
            method: Method::Batch,
            file: "f.csv".into(),
            table: "t".into(),
            workers: 1,
            batch_size: 10,
            upsert: false,
        };
        let tally = Tally {
            rows_read: 1,
            success_count: 1,
            error_count: 0,
        };
        let real = ImportStats::new(&shape, tally, Duration::ZERO, true).unwrap();
        let real_json = serde_json::to_value(&real).unwrap();
        assert!(real_json.get("dry_run").is_none(), "{real_json}");
        assert!(real_json.get("create_table").is_none(), "{real_json}");
        assert!(real.render_text().contains("Inserted"));

        let dry = real.into_dry_run(Some("CREATE TABLE \"t\" (\"a\" text)".into()));
        let dry_json = serde_json::to_value(&dry).unwrap();
        assert_eq!(dry_json["dry_run"], true);
        assert_eq!(dry_json["create_table"], "CREATE TABLE \"t\" (\"a\" text)");
        let text = dry.render_text();
        assert!(text.contains("Would insert"), "{text}");
        assert!(text.starts_with("-- dry run"), "{text}");
        assert!(text.contains("CREATE TABLE \"t\" (\"a\" text);"), "{text}");
    }

    #[test]
    fn upsert_stats_say_written_in_text_and_nothing_more_in_json() {
        let shape = RunShape {
            method: Method::Copy,
            file: "f.csv".into(),
            table: "t".into(),
            workers: 1,
            batch_size: 10,
            upsert: true,
        };
        let tally = Tally {
            rows_read: 2,
            success_count: 2,
            error_count: 0,
        };
        let upsert = ImportStats::new(&shape, tally, Duration::ZERO, true).unwrap();
        let header = upsert.render_text().lines().next().unwrap().to_string();
        assert!(
            header.contains("| Written |") && !header.contains("Inserted"),
            "{header}"
        );
        assert!(
            upsert
                .clone()
                .into_dry_run(None)
                .render_text()
                .contains("| Would write |")
        );
        let json = serde_json::to_value(&upsert).unwrap();
        assert!(json.get("upsert").is_none(), "{json}");
    }
}
