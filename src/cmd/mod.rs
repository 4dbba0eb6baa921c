//! One file per subcommand: orchestration only (no SQL, no cell logic).

pub mod bench;
pub mod generate;
pub mod history;
pub mod manual;
pub mod mode;
pub mod record;
pub mod run;

/// How a command ended, for the exit code (mapped in `main`, the one place exit codes live).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every row is in (exit 0).
    AllIn,
    /// The import finished but some rows were rejected (exit 3).
    SomeRejected,
    /// Stopped by a signal after finishing what was read (exit 128 + signal number).
    Interrupted(Signal),
}

/// A signal that stops a run cleanly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// Ctrl-C.
    Interrupt,
    /// SIGTERM (systemd, kill, a CI timeout).
    Terminate,
}

impl Signal {
    /// The signal's number (exit code = 128 + number).
    pub fn number(self) -> u8 {
        match self {
            Signal::Interrupt => 2,
            Signal::Terminate => 15,
        }
    }

    /// The signal's name.
    pub fn name(self) -> &'static str {
        match self {
            Signal::Interrupt => "SIGINT",
            Signal::Terminate => "SIGTERM",
        }
    }
}

/// Waits for Ctrl-C or SIGTERM. Failing to install a handler is fatal: an unattended run
/// that cannot be stopped cleanly should not start.
pub async fn wait_for_signal() -> anyhow::Result<Signal> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    tokio::select! {
        _ = interrupt.recv() => Ok(Signal::Interrupt),
        _ = terminate.recv() => Ok(Signal::Terminate),
    }
}
