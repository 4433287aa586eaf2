//! Operator commands on the queue: list, export and discard batches; show, reset and set a
//! cursor; resynchronize a resource; accept a changed configuration; list, find (by a raw
//! key, computed locally) and clear quarantine entries (docs/OPERATIONS.md).
//!
//! Each command opens the queue itself, so it refuses to run while the service holds the
//! queue (stop the service, run the command, start it again; only `sync` goes through the
//! running service). Every command that changes something appends an entry to the audit log
//! ([`crate::audit`]) before it reports success. Nothing here prints a field value except
//! `queue export`, which writes a batch's records (what leaves for the hub anyway) to a file
//! or standard output on the operator's request, and `cursor show`/`set`, whose position is
//! the source's own cursor values.

mod batches;
pub mod check;
mod command;
mod cursor;
mod quarantine;
mod stream;

pub use batches::{queue_discard, queue_export, queue_list};
pub use command::{OperatorError, open_queue};
pub use cursor::{cursor_reset, cursor_set, cursor_show};
pub use quarantine::{quarantine_clear, quarantine_find, quarantine_list};
pub use stream::{accept_config, resync};
