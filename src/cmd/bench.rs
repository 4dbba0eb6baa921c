//! `importer bench`: runs each method `--repeat` times on one file into a scratch table
//! shaped like the target (`LIKE target INCLUDING ALL`, or the inferred shape when the target
//! does not exist), dropped after each run, and prints one row per method: median time,
//! records/s and speedup against sequential. The target's rows are never touched.

use std::sync::Arc;
use std::time::Instant;

use anyhow::bail;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::run::import_options;
use super::{Outcome, SignalListener, until_signal};
use crate::cli::{BenchArgs, BenchFormat};
use crate::import::ImportControl;
use crate::import::load::run_job;
use crate::import::prepare::{Prepared, build_job, create_table, infer_types, prepare};
use crate::rejects::RejectLog;
use crate::schema::InferredType;
use crate::sink::{self, TableName, TargetTable};
use crate::stats::{print_report, render_table};
use crate::strategy::Method;

/// One method's results over all its runs.
#[derive(Debug, Clone, Serialize)]
pub struct MethodResult {
    pub method: String,
    pub runs: u32,
    pub median_seconds: f64,
    pub records_per_second: f64,
    /// Sequential's median time over this one's; `None` when sequential was not run.
    pub speedup: Option<f64>,
    pub total_records: u64,
    pub success_count: u64,
    pub error_count: u64,
    pub durations_seconds: Vec<f64>,
}

/// The whole comparison, as `--format json` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub file: String,
    pub table: String,
    pub workers: usize,
    pub batch_size: usize,
    pub results: Vec<MethodResult>,
}

/// Runs `importer bench`.
pub async fn run(args: BenchArgs) -> anyhow::Result<Outcome> {
    let prepared = prepare(&import_options(&args.import)).await?;
    // the target's shape, or the sheet's inferred one: decided once for every run
    let inferred: Option<Vec<InferredType>> = match &prepared.existing {
        Some(_) => None,
        None => Some(infer_types(&prepared).await?),
    };
    let scratch = TableName {
        schema: prepared.table_name.schema.clone(),
        name: format!("importer_bench_{}", std::process::id()),
    };
    let mut results = Vec::new();
    for method in args.methods.iter().copied().map(Method::from) {
        let mut durations = Vec::new();
        let mut last = None;
        for repetition in 1..=args.repeat {
            let table = match (&prepared.existing, &inferred) {
                (Some(target), _) => {
                    sink::create_table_like(
                        &prepared.pool,
                        &target.name,
                        &scratch,
                        "INCLUDING ALL",
                    )
                    .await?;
                    sink::load_table(&prepared.pool, &scratch).await?
                }
                (None, Some(types)) => Some(create_table(&prepared, &scratch, types).await?),
                (None, None) => None,
            };
            let Some(table) = table else {
                bail!("scratch table {scratch} vanished right after it was created");
            };
            let measured = measure(&prepared, table, method, args.import.batch_size).await;
            sink::drop_table(&prepared.pool, &scratch).await?;
            let (seconds, tally) = measured?;
            info!(
                method = method.name(),
                repetition,
                repeat = args.repeat,
                duration_seconds = seconds,
                "bench run finished"
            );
            durations.push(seconds);
            last = Some(tally);
        }
        let tally = last.unwrap_or_default();
        let median_seconds = median(&durations);
        results.push(MethodResult {
            method: method.name().to_string(),
            runs: args.repeat,
            median_seconds,
            records_per_second: if median_seconds > 0.0 {
                tally.success_count as f64 / median_seconds
            } else {
                0.0
            },
            speedup: None,
            total_records: tally.processed(),
            success_count: tally.success_count,
            error_count: tally.error_count,
            durations_seconds: durations,
        });
    }
    let sequential_seconds = results
        .iter()
        .find(|result| result.method == Method::Sequential.name())
        .map(|result| result.median_seconds);
    for result in &mut results {
        result.speedup = sequential_seconds
            .filter(|_| result.median_seconds > 0.0)
            .map(|sequential| sequential / result.median_seconds);
    }
    let report = BenchReport {
        file: args.import.file.display().to_string(),
        table: prepared.table_name.to_string(),
        workers: prepared.workers,
        batch_size: args.import.batch_size as usize,
        results,
    };
    print_report(&render(&report, args.format)?);
    Ok(Outcome::AllIn)
}

/// One timed run into `table`; a run stopped by an error or a signal fails the bench.
async fn measure(
    prepared: &Prepared,
    table: TargetTable,
    method: Method,
    batch_size: u32,
) -> anyhow::Result<(f64, crate::stats::Tally)> {
    let cancel = CancellationToken::new();
    let rejects = Arc::new(RejectLog::create(
        None,
        &prepared.header,
        None,
        cancel.clone(),
    )?);
    let job = build_job(prepared, table, method, batch_size, rejects, cancel)?;
    let started = Instant::now();
    // a listener per run, as the runs in between have nothing to stop
    let mut signals = SignalListener::install()?;
    let control = ImportControl::new();
    let ((report, _), signal) = until_signal(
        &mut signals,
        &control,
        run_job(method, job, false, &control),
    )
    .await;
    let seconds = started.elapsed().as_secs_f64();
    if let Some(error) = report.error {
        return Err(error.context(format!("bench run of {} failed", method.name())));
    }
    if let Some(signal) = signal {
        bail!("bench interrupted by {}", signal.name());
    }
    Ok((seconds, report.tally))
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => 0.0,
        count if count % 2 == 1 => sorted[count / 2],
        count => (sorted[count / 2 - 1] + sorted[count / 2]) / 2.0,
    }
}

fn render(report: &BenchReport, format: BenchFormat) -> anyhow::Result<String> {
    if format == BenchFormat::Json {
        return Ok(serde_json::to_string_pretty(report)?);
    }
    let header = [
        "Method",
        "Runs",
        "Median time",
        "Records/sec",
        "Speedup",
        "Inserted",
        "Rejected",
    ];
    let rows: Vec<Vec<String>> = report
        .results
        .iter()
        .map(|result| {
            vec![
                result.method.clone(),
                result.runs.to_string(),
                format!("{:.3}s", result.median_seconds),
                format!("{:.0}", result.records_per_second),
                result
                    .speedup
                    .map_or_else(|| "-".to_string(), |speedup| format!("{speedup:.1}x")),
                result.success_count.to_string(),
                result.error_count.to_string(),
            ]
        })
        .collect();
    let table = render_table(&header, &rows);
    Ok(match format {
        BenchFormat::Markdown => table,
        _ => format!(
            "{} -> {} ({} workers, batch size {})\n{table}",
            report.file, report.table, report.workers, report.batch_size
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
    }
}
