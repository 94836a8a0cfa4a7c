//! The signals that stop a server: SIGINT (Ctrl-C) and, on Unix, SIGTERM. A binary
//! shuts down gracefully on the first and exits at once on the second.

use std::io;

/// A signal that asks the server to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownSignal {
    /// SIGINT (Ctrl-C).
    Interrupt,
    /// SIGTERM.
    Terminate,
}

impl ShutdownSignal {
    /// The exit status of a process stopped by the signal, as a shell reports it:
    /// 128 + its number (130 for SIGINT, 143 for SIGTERM).
    pub fn exit_code(self) -> u8 {
        match self {
            Self::Interrupt => 130,
            Self::Terminate => 143,
        }
    }

    /// `SIGINT` or `SIGTERM`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Interrupt => "SIGINT",
            Self::Terminate => "SIGTERM",
        }
    }
}

/// The stop signals, listened to from creation on: none is missed between two
/// [`recv`](Self::recv)s.
///
/// ```no_run
/// # async fn serve() -> std::io::Result<()> {
/// let mut signals = llmjp_server::ShutdownSignals::new()?;
/// let first = signals.recv().await; // start a graceful shutdown
/// let second = signals.recv().await; // give up on it
/// std::process::exit(second.exit_code().into());
/// # }
/// ```
#[derive(Debug)]
pub struct ShutdownSignals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl ShutdownSignals {
    /// Starts listening (inside a tokio runtime).
    pub fn new() -> io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Self {
                interrupt: signal(SignalKind::interrupt())?,
                terminate: signal(SignalKind::terminate())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    /// The next stop signal.
    pub async fn recv(&mut self) -> ShutdownSignal {
        #[cfg(unix)]
        {
            tokio::select! {
                Some(()) = self.interrupt.recv() => ShutdownSignal::Interrupt,
                Some(()) = self.terminate.recv() => ShutdownSignal::Terminate,
                else => std::future::pending().await,
            }
        }
        #[cfg(not(unix))]
        {
            match tokio::signal::ctrl_c().await {
                Ok(()) => ShutdownSignal::Interrupt,
                Err(_) => std::future::pending().await,
            }
        }
    }
}

/// Resolves on the first SIGINT (Ctrl-C) or, on Unix, SIGTERM; never when the signals
/// cannot be listened to.
pub async fn shutdown_signal() {
    match ShutdownSignals::new() {
        Ok(mut signals) => {
            signals.recv().await;
        }
        Err(_) => std::future::pending::<()>().await,
    }
}
