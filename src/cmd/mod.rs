//! One file per subcommand: orchestration only (no SQL, no cell logic).

pub mod bench;
pub mod generate;
pub mod history;
pub mod manual;
pub mod run;

use crate::import::ImportControl;

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

/// Ctrl-C and SIGTERM, listened for from the start of a command to its end. One listener for
/// the whole run, because a listener only sees the signals that arrive after it was made:
/// one made per phase would miss a signal between two phases (or let the first one kill the
/// process the default way, with nothing printed or recorded).
pub struct SignalListener {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl SignalListener {
    /// Starts listening. Failing to is fatal: an unattended run that cannot be stopped
    /// cleanly should not start.
    pub fn install() -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(SignalListener {
            interrupt: signal(SignalKind::interrupt())
                .map_err(anyhow::Error::new)
                .map_err(|error| error.context("cannot listen for Ctrl-C"))?,
            terminate: signal(SignalKind::terminate())
                .map_err(anyhow::Error::new)
                .map_err(|error| error.context("cannot listen for SIGTERM"))?,
        })
    }

    /// Waits for the next signal (cancel-safe: dropping the future loses no signal).
    pub async fn recv(&mut self) -> Signal {
        tokio::select! {
            _ = self.interrupt.recv() => Signal::Interrupt,
            _ = self.terminate.recv() => Signal::Terminate,
        }
    }

    /// A signal that arrived since the last look, without waiting.
    pub fn pending(&mut self) -> Option<Signal> {
        let mut context = std::task::Context::from_waker(std::task::Waker::noop());
        if self.interrupt.poll_recv(&mut context).is_ready() {
            Some(Signal::Interrupt)
        } else if self.terminate.poll_recv(&mut context).is_ready() {
            Some(Signal::Terminate)
        } else {
            None
        }
    }
}

/// Runs `work` to its end while listening to `signals`: the first Ctrl-C or SIGTERM cancels
/// `control` (naming the signal, which logs and the ledger repeat) and `work` goes on to
/// finish what it read; later signals change nothing. Returns the first signal beside the
/// result.
pub async fn until_signal<T>(
    signals: &mut SignalListener,
    control: &ImportControl,
    work: impl Future<Output = T>,
) -> (T, Option<Signal>) {
    tokio::pin!(work);
    let mut first = None;
    loop {
        tokio::select! {
            result = &mut work => return (result, first),
            signal = signals.recv() => {
                if first.is_none() {
                    first = Some(signal);
                    control.cancel_because(signal.name());
                }
            }
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
