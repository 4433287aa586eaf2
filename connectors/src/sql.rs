//! Compatibility shim: the SQL text helpers live in [`crate::dialect`]. `mysql.rs` still calls
//! `sql::cursor_positions` until it adopts the [`crate::dialect::Dialect`]; then this module
//! goes.

pub(crate) use crate::dialect::cursor_positions;
