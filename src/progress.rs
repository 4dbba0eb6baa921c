//! Progress on stderr while a run goes: a bar with rows, rows/s and ETA (indicatif) when
//! stderr is a terminal, else one log line every few seconds, for cron mails and log
//! shippers. It only displays: the counts in the stats come from the tallies, not from here.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tracing::info;

/// How often the bar is redrawn.
const BAR_INTERVAL: Duration = Duration::from_millis(200);
/// How often a progress line is logged when stderr is not a terminal.
const LOG_INTERVAL: Duration = Duration::from_secs(5);

/// Rows the reader has handed on (converted or rejected), updated once per chunk.
#[derive(Debug, Default)]
pub struct RowCounter(AtomicU64);

impl RowCounter {
    /// Adds rows that reached the writers or were rejected.
    pub fn add(&self, row_count: u64) {
        self.0.fetch_add(row_count, Ordering::Relaxed);
    }

    /// The rows counted so far.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// The display: a bar on a terminal, else periodic log lines.
pub struct Progress {
    bar: Option<ProgressBar>,
    started: Instant,
    last_logged: Instant,
}

impl Progress {
    /// Starts the display; `expected_rows` (from the sheet's declared size) gives the ETA.
    pub fn start(expected_rows: Option<u64>) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(expected_rows, ProgressDrawTarget::stderr());
            let template = match expected_rows {
                Some(_) => "{bar:30} {human_pos}/{human_len} rows  {per_sec}  ETA {eta}",
                None => "{spinner} {human_pos} rows  {per_sec}",
            };
            if let Ok(style) = ProgressStyle::with_template(template) {
                bar.set_style(style);
            }
            bar
        });
        let now = Instant::now();
        Progress {
            bar,
            started: now,
            last_logged: now,
        }
    }

    /// How often `update` wants to be called.
    pub fn interval(&self) -> Duration {
        if self.bar.is_some() {
            BAR_INTERVAL
        } else {
            LOG_INTERVAL
        }
    }

    /// Shows `row_count` rows done.
    pub fn update(&mut self, row_count: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(row_count);
            return;
        }
        if self.last_logged.elapsed() >= LOG_INTERVAL {
            self.last_logged = Instant::now();
            let seconds = self.started.elapsed().as_secs_f64();
            let rows_per_second = if seconds > 0.0 {
                (row_count as f64 / seconds).round()
            } else {
                0.0
            };
            info!(row_count, rows_per_second, "progress");
        }
    }

    /// Removes the bar (the stats follow on stdout).
    pub fn finish(self) {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}
