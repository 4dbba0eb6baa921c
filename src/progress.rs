//! Progress on stderr while a pass over the sheet goes (the type inference, the import): a
//! bar with rows, rows/s and ETA (indicatif) when stderr is a terminal, else one log line
//! every [`LOG_INTERVAL`], for cron mails and log shippers; nothing with `--quiet`. It only
//! displays: the counts in the stats come from the tallies, not from here.
//!
//! Log lines and the bar share stderr: [`LogWriter`] hides the bar while a line is written
//! (indicatif's `suspend`), so a warning never lands in the middle of the bar. The display
//! settings (`--quiet`, `NO_COLOR`) are read once at start by `main` ([`configure`]).

use std::future::Future;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};
use tracing::info;

/// How often the bar is redrawn.
const BAR_INTERVAL: Duration = Duration::from_millis(200);
/// How often a progress line is logged when stderr is not a terminal.
pub const LOG_INTERVAL: Duration = Duration::from_secs(5);

/// The display settings, from the flags and the environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DisplaySettings {
    /// `-q/--quiet`: no progress at all (and only warnings and errors in the logs).
    pub quiet: bool,
    /// ANSI colours in the logs: stderr is a terminal and `NO_COLOR` is unset or empty.
    pub color: bool,
}

static SETTINGS: OnceLock<DisplaySettings> = OnceLock::new();

/// The bar on screen, if any, so that log lines can be written around it.
static ACTIVE_BAR: Mutex<Option<ProgressBar>> = Mutex::new(None);

impl DisplaySettings {
    /// The settings for this process: `quiet` from the flag, colours only on a terminal
    /// and when `NO_COLOR` is unset or empty (<https://no-color.org>).
    pub fn detect(quiet: bool) -> Self {
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|value| !value.is_empty());
        DisplaySettings {
            quiet,
            color: std::io::stderr().is_terminal() && !no_color,
        }
    }
}

/// Sets the display settings for the process (the first call wins).
pub fn configure(settings: DisplaySettings) {
    SETTINGS.set(settings).ok();
}

fn settings() -> DisplaySettings {
    *SETTINGS.get_or_init(|| DisplaySettings::detect(false))
}

/// Rows a pass has handled so far, updated in batches by the reader.
#[derive(Debug, Default)]
pub struct RowCounter(AtomicU64);

impl RowCounter {
    /// Adds rows that reached the writers or were rejected (or were inferred over).
    pub fn add(&self, row_count: u64) {
        self.0.fetch_add(row_count, Ordering::Relaxed);
    }

    /// The rows counted so far.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Where the progress goes.
enum Display {
    /// A bar on the terminal; `has_eta` once the first row has come (no "ETA 0s" before).
    Bar { bar: ProgressBar, has_eta: bool },
    /// A log line every [`LOG_INTERVAL`].
    Log,
    /// Nothing: `--quiet`, or the bar was cleared (Ctrl-C).
    Hidden,
}

/// The display of one pass.
pub struct Progress {
    display: Display,
    /// What the pass is, as the bar and the log lines name it.
    phase: &'static str,
    expected_rows: Option<u64>,
    started: Instant,
    /// Time since `started` at which the next log line is due.
    next_log: Duration,
}

impl Progress {
    /// Starts the display of the import; `expected_rows` (from the sheet's declared size)
    /// gives the total, the percentage and the ETA.
    pub fn start(expected_rows: Option<u64>) -> Self {
        Progress::start_phase("import", expected_rows)
    }

    /// Starts the display of a pass named `phase` (`import`, `inferring column types`).
    pub fn start_phase(phase: &'static str, expected_rows: Option<u64>) -> Self {
        let display = if settings().quiet {
            Display::Hidden
        } else if std::io::stderr().is_terminal() {
            let bar = ProgressBar::with_draw_target(expected_rows, ProgressDrawTarget::stderr());
            bar.set_style(bar_style(expected_rows.is_some(), false));
            bar.set_message(phase);
            bar.tick();
            *active_bar() = Some(bar.clone());
            Display::Bar {
                bar,
                has_eta: false,
            }
        } else {
            Display::Log
        };
        Progress {
            display,
            phase,
            expected_rows,
            started: Instant::now(),
            next_log: LOG_INTERVAL,
        }
    }

    /// How often `update` wants to be called.
    pub fn interval(&self) -> Duration {
        match self.display {
            Display::Bar { .. } => BAR_INTERVAL,
            Display::Log | Display::Hidden => LOG_INTERVAL,
        }
    }

    /// Shows `row_count` rows done.
    pub fn update(&mut self, row_count: u64) {
        match &mut self.display {
            Display::Bar { bar, has_eta } => {
                if row_count > 0 && !*has_eta && self.expected_rows.is_some() {
                    bar.set_style(bar_style(true, true));
                    *has_eta = true;
                }
                bar.set_position(row_count);
            }
            Display::Log => {
                let elapsed = self.started.elapsed();
                if elapsed < self.next_log {
                    return;
                }
                // due every LOG_INTERVAL from the start, whenever the tick that logs it
                // comes: a late tick does not push the next line back
                let intervals_passed = elapsed.as_millis() / LOG_INTERVAL.as_millis();
                self.next_log = LOG_INTERVAL * (intervals_passed as u32 + 1);
                self.log_line(row_count, elapsed);
            }
            Display::Hidden => {}
        }
    }

    fn log_line(&self, row_count: u64, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let rows_per_second = if seconds > 0.0 {
            (row_count as f64 / seconds).round() as u64
        } else {
            0
        };
        match self.expected_rows {
            Some(total_rows) if total_rows > 0 => {
                // the declared size is a hint: never claim more than 100 %
                let percent = (row_count.saturating_mul(100) / total_rows).min(100);
                info!(
                    phase = self.phase,
                    row_count, total_rows, percent, rows_per_second, "progress"
                );
            }
            _ => info!(phase = self.phase, row_count, rows_per_second, "progress"),
        }
    }

    /// Takes the bar off the screen at once (Ctrl-C: the warning and the stats follow);
    /// nothing more is shown for this pass.
    pub fn clear(&mut self) {
        if let Display::Bar { bar, .. } = std::mem::replace(&mut self.display, Display::Hidden) {
            remove_bar(&bar);
        }
    }

    /// Removes the bar (the stats follow on stdout).
    pub fn finish(mut self) {
        self.clear();
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.clear();
    }
}

/// Runs `work` while showing its progress as `phase`: `counter` is what `work` counts its
/// rows into, `expected_rows` the sheet's declared size.
pub async fn track<T>(
    phase: &'static str,
    expected_rows: Option<u64>,
    counter: &RowCounter,
    work: impl Future<Output = T>,
) -> T {
    let mut progress = Progress::start_phase(phase, expected_rows);
    let mut ticks = tokio::time::interval(progress.interval());
    tokio::pin!(work);
    loop {
        tokio::select! {
            done = &mut work => {
                progress.finish();
                return done;
            }
            _ = ticks.tick() => progress.update(counter.get()),
        }
    }
}

fn active_bar() -> std::sync::MutexGuard<'static, Option<ProgressBar>> {
    // a panic while a log line is written cannot leave the slot inconsistent
    ACTIVE_BAR
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn remove_bar(bar: &ProgressBar) {
    // one pass at a time shows a bar, so the one on screen is this one
    *active_bar() = None;
    bar.finish_and_clear();
}

/// The bar's look: no colours (so `NO_COLOR` has nothing to take away), the rate rounded
/// to whole rows per second, and the ETA only once rows have come.
fn bar_style(total_known: bool, with_eta: bool) -> ProgressStyle {
    let template = match (total_known, with_eta) {
        (true, true) => "{msg} {bar:30} {human_pos}/{human_len} rows  {rate}  ETA {eta}",
        (true, false) => "{msg} {bar:30} {human_pos}/{human_len} rows  {rate}",
        (false, _) => "{spinner} {msg} {human_pos} rows  {rate}",
    };
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .with_key(
            "rate",
            |state: &ProgressState, out: &mut dyn std::fmt::Write| {
                write!(out, "{:.0} rows/s", state.per_sec()).ok();
            },
        )
}

/// tracing's writer for stderr: each log line is written with the bar (if one is shown)
/// taken off the screen, and the bar drawn again below it.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogWriter;

/// One log line being written; it reaches stderr when dropped.
pub struct LogLine(Vec<u8>);

impl Write for LogLine {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LogLine {
    fn drop(&mut self) {
        let line = std::mem::take(&mut self.0);
        let write = || {
            // a log line that cannot reach stderr has nowhere else to go
            std::io::stderr().write_all(&line).ok();
        };
        let bar = active_bar().clone();
        match bar {
            Some(bar) => bar.suspend(write),
            None => write(),
        }
    }
}

impl<'writer> tracing_subscriber::fmt::MakeWriter<'writer> for LogWriter {
    type Writer = LogLine;

    fn make_writer(&'writer self) -> Self::Writer {
        LogLine(Vec::with_capacity(256))
    }
}
