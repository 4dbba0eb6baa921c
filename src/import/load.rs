//! Running a prepared job: the strategy writes the rows while the terminal's progress display
//! and the caller's [`ProgressSink`](super::ProgressSink) are kept up to date, and a cancel
//! stops the reader (the rows already read are finished).

use std::sync::Arc;
use std::time::Duration;

use tracing::warn;

use super::control::{ImportControl, RowsSoFar};
use crate::job::ImportJob;
use crate::progress::Progress;
use crate::strategy::{self, Method, RunReport};

/// How often the caller's progress sink hears the rows so far.
const PROGRESS_SINK_INTERVAL: Duration = Duration::from_millis(100);

/// Runs a job to its end (with `dry_run`, converting only). A cancel of `control` stops it:
/// the reader stops, rows already read are finished, and the report says it was cancelled.
pub async fn run_job(
    method: Method,
    job: ImportJob,
    dry_run: bool,
    control: &ImportControl,
) -> (RunReport, bool) {
    let cancel = job.cancel.clone();
    let job = Arc::new(job);
    let mut progress = Progress::start(job.header.declared_row_count);
    let mut ticks = tokio::time::interval(progress.interval());
    let mut sink_ticks = tokio::time::interval(PROGRESS_SINK_INTERVAL);
    sink_ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let running = {
        let job = Arc::clone(&job);
        async move {
            if dry_run {
                strategy::dry_run(job).await
            } else {
                strategy::run(method, job).await
            }
        }
    };
    tokio::pin!(running);
    let mut cancelled = false;
    loop {
        tokio::select! {
            report = &mut running => {
                progress.finish();
                report_rows(control, &job);
                return (report, cancelled);
            }
            _ = ticks.tick() => progress.update(job.progress.get()),
            _ = sink_ticks.tick(), if control.progress.is_some() => report_rows(control, &job),
            () = control.cancel.cancelled(), if !cancelled => {
                progress.clear();
                warn!(signal = control.cause(), "stopping: no more rows are read; rows already read are finished");
                cancelled = true;
                cancel.cancel();
            }
        }
    }
}

/// Tells the progress sink, if any, the rows so far.
fn report_rows(control: &ImportControl, job: &ImportJob) {
    if let Some(sink) = &control.progress {
        sink.rows(RowsSoFar {
            read: job.progress.get(),
            written: job.written.get(),
            rejected: job.rejects.rejected_count(),
        });
    }
}
