//! Telling systemd how the service is doing (`Type=notify`), by hand: no library.
//!
//! # Protocol
//! systemd passes the path of a unix datagram socket in `NOTIFY_SOCKET` (a path starting with
//! `@` names an abstract socket: the `@` stands for the leading NUL byte). Each message is one
//! datagram of newline-separated `KEY=value` assignments (sd_notify(3)):
//! - `READY=1`: startup is complete (configuration loaded, queue open, listeners bound);
//! - `RELOADING=1` … `READY=1`: a reload is in progress, then done;
//! - `STOPPING=1`: shutdown has begun;
//! - `WATCHDOG=1`: the main loop is alive; systemd kills and restarts the service when no ping
//!   arrives within `WatchdogSec=` (passed to the service as `WATCHDOG_USEC`, and
//!   `WATCHDOG_PID` when it is meant for one process only);
//! - `STATUS=…`: one line shown by `systemctl status`.
//!
//! Without `NOTIFY_SOCKET` (run by hand, in a test) every call does nothing.

use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// The connection to the service manager, if there is one.
#[derive(Debug)]
pub struct Notifier {
    /// The socket and the manager's address; `None` when not run by systemd.
    target: Option<(UnixDatagram, std::os::unix::net::SocketAddr)>,
    /// `WATCHDOG_USEC` when meant for this process.
    watchdog: Option<Duration>,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` from the environment.
    pub fn from_env() -> Notifier {
        let target = std::env::var_os("NOTIFY_SOCKET").and_then(|path| {
            let addr = match address(path.as_encoded_bytes()) {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(socket = ?path, error = %e, "NOTIFY_SOCKET is not a usable socket address; systemd is not told about readiness.");
                    return None;
                }
            };
            match UnixDatagram::unbound() {
                Ok(s) => Some((s, addr)),
                Err(e) => {
                    tracing::warn!(error = %e, "Cannot create the notification socket.");
                    None
                }
            }
        });
        let for_us = std::env::var("WATCHDOG_PID")
            .ok()
            .map(|p| p.trim().parse::<u32>().ok() == Some(std::process::id()))
            .unwrap_or(true);
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|u| u.trim().parse::<u64>().ok())
            .filter(|&u| u > 0 && for_us)
            .map(Duration::from_micros);
        Notifier { target, watchdog }
    }

    /// A notifier that sends nothing (not run by systemd).
    pub fn inactive() -> Notifier {
        Notifier {
            target: None,
            watchdog: None,
        }
    }

    /// How often to send `WATCHDOG=1`: half of `WatchdogSec=` (as sd_watchdog_enabled(3)
    /// advises), or `None` when no watchdog is set.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog.map(|d| d / 2)
    }

    /// Whether a service manager listens.
    pub fn is_active(&self) -> bool {
        self.target.is_some()
    }

    /// Sends one message (`KEY=value` lines); failures are logged, never fatal.
    pub fn send(&self, message: &str) {
        if let Some((socket, addr)) = &self.target
            && let Err(e) = socket.send_to_addr(message.as_bytes(), addr)
        {
            tracing::warn!(error = %e, "Cannot notify systemd.");
        }
    }

    /// `READY=1` with a status line.
    pub fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={}", one_line(status)));
    }

    /// `WATCHDOG=1` with a status line.
    pub fn alive(&self, status: &str) {
        self.send(&format!("WATCHDOG=1\nSTATUS={}", one_line(status)));
    }

    /// `RELOADING=1` (with the monotonic time systemd ≥ 253 asks for).
    pub fn reloading(&self) {
        self.send(&format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()));
    }

    /// `STOPPING=1`.
    pub fn stopping(&self) {
        self.send("STOPPING=1\nSTATUS=Stopping.");
    }
}

/// A status line without newlines (which would start a new assignment).
fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

/// `CLOCK_MONOTONIC` in microseconds.
fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC is always available.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}

/// The socket address `NOTIFY_SOCKET` names: a path, or an abstract name after `@`.
fn address(bytes: &[u8]) -> std::io::Result<std::os::unix::net::SocketAddr> {
    use std::os::linux::net::SocketAddrExt;
    match bytes.strip_prefix(b"@") {
        Some(name) => std::os::unix::net::SocketAddr::from_abstract_name(name),
        None if bytes.starts_with(b"/") => std::os::unix::net::SocketAddr::from_pathname(
            std::path::Path::new(std::ffi::OsStr::from_bytes(bytes)),
        ),
        None => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "neither an absolute path nor @abstract",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_reach_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("exchange-agent-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let server = UnixDatagram::bind_addr(&addr).unwrap();
        let n = Notifier {
            target: Some((
                UnixDatagram::unbound().unwrap(),
                address(format!("@{name}").as_bytes()).unwrap(),
            )),
            watchdog: Some(Duration::from_secs(10)),
        };
        n.ready("2 resources\nqueued 0");
        let mut buf = [0u8; 256];
        let len = server.recv(&mut buf).unwrap();
        assert_eq!(
            std::str::from_utf8(&buf[..len]).unwrap(),
            "READY=1\nSTATUS=2 resources queued 0"
        );
        assert_eq!(n.watchdog_interval(), Some(Duration::from_secs(5)));
    }

    #[test]
    fn a_relative_socket_path_is_refused() {
        assert!(address(b"run/notify").is_err());
    }
}
