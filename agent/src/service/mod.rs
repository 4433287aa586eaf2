//! The agent as a system service (`exchange-agent run`).
//!
//! - [`daemon`]: the pipeline's loops, the verification listener and the rest, started and
//!   stopped together;
//! - [`control`]: the control socket through which commands reach the running daemon;
//! - [`reload`]: a new configuration taken whole or not at all (SIGHUP, file changes);
//! - [`admin`]: the loopback listener for `/metrics` and `/health`;
//! - `drop_watch`: a file drop directory watched, to read a dropped file without waiting for
//!   the schedule;
//! - [`sd_notify`]: readiness, watchdog and status line for systemd;
//! - [`status`]: the report `exchange-agent status` shows and the daemon writes.

pub mod admin;
pub mod control;
pub mod daemon;
mod drop_watch;
pub mod exposition;
pub mod reload;
pub mod sd_notify;
pub mod status;
