//! Operator commands on the queue: list, export and discard batches; show, reset and set a
//! cursor; resynchronize a resource; accept a changed configuration; list, find (by a raw
//! key, computed locally) and clear quarantine entries (docs/OPERATIONS.md).
//!
//! Each command is an [`Operation`]: run on the queue the command opens itself, or, while the
//! service holds the queue, sent to the service, which carries it out on its own queue
//! ([`operation`] says how; read-only commands beside its pulls, changes between them).
//! Every command that changes something needs `--yes` and appends an entry to the audit log
//! ([`crate::audit`]) before it reports success. Nothing here prints a field value except
//! `queue export`, which writes a batch's records (what leaves for the hub anyway) to a file
//! or standard output on the operator's request, and `cursor show`/`set`, whose position is
//! the source's own cursor values.

mod batches;
pub mod check;
mod command;
mod cursor;
pub mod operation;
mod quarantine;
mod stream;

pub use batches::{Export, export_target, queue_discard, queue_export, queue_list, write_export};
pub use command::{OperatorError, open_queue};
pub use cursor::{cursor_reset, cursor_set, cursor_show};
pub use operation::{Operation, Outcome};
pub use quarantine::{key_as_it_leaves, quarantine_clear, quarantine_find, quarantine_list};
pub use stream::{accept_config, resync};
