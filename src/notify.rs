//! systemd's notify protocol (`Type=notify`), hand-written: one datagram per
//! state to the socket named by `NOTIFY_SOCKET` (a path, or `@name` for an
//! abstract socket). Without `NOTIFY_SOCKET` every call does nothing.

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("cannot send {state:?} to NOTIFY_SOCKET {socket}: {error}")]
    Send {
        state: String,
        socket: String,
        error: std::io::Error,
    },
}

/// Where to send notifications, if systemd (or a test) asked for them.
#[derive(Debug, Clone)]
pub struct Notify {
    socket: Option<String>,
}

impl Notify {
    pub fn from_env() -> Notify {
        Notify {
            socket: std::env::var("NOTIFY_SOCKET")
                .ok()
                .filter(|s| !s.is_empty()),
        }
    }

    pub fn enabled(&self) -> bool {
        self.socket.is_some()
    }

    /// Send `state` (e.g. `READY=1`); a no-op without `NOTIFY_SOCKET`.
    pub fn send(&self, state: &str) -> Result<(), NotifyError> {
        let Some(socket) = &self.socket else {
            return Ok(());
        };
        let err = |source| NotifyError::Send {
            state: state.to_owned(),
            socket: socket.clone(),
            error: source,
        };
        let sock = UnixDatagram::unbound().map_err(err)?;
        if let Some(name) = socket.strip_prefix('@') {
            use std::os::linux::net::SocketAddrExt;
            let addr =
                std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).map_err(err)?;
            sock.send_to_addr(state.as_bytes(), &addr).map_err(err)?;
        } else {
            sock.send_to(state.as_bytes(), PathBuf::from(socket))
                .map_err(err)?;
        }
        Ok(())
    }

    /// Send `state`, logging (not failing) if it cannot be sent.
    pub fn send_or_warn(&self, state: &str) {
        if let Err(e) = self.send(state) {
            tracing::warn!("{e}");
        }
    }

    /// How often to send `WATCHDOG=1`: half of `WATCHDOG_USEC`, if the watchdog
    /// is on and meant for this process (`WATCHDOG_PID`, when set).
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.socket.as_ref()?;
        if let Ok(pid) = std::env::var("WATCHDOG_PID") {
            if pid.trim() != std::process::id().to_string() {
                return None;
            }
        }
        let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
        (usec > 0).then(|| Duration::from_micros(usec) / 2)
    }
}
