//! What the pipeline knows at run time and the queue does not hold: per resource the last pull
//! and push error, how the last page was bounded, whether a transaction open on the source
//! holds it back, and how long the last incremental pull's statement took. Shared by the pull and push loops, read by `status`, the metrics and the
//! systemd status line.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use exchange_protocol::lang::Text;
use serde::{Deserialize, Serialize};

/// Runtime facts that are not in the queue.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Runtime {
    /// Last pull error, if the last pull failed.
    pub pull_error: Option<Text>,
    /// Last push error, if the last push failed.
    pub push_error: Option<Text>,
    /// How the last page was bounded, in both languages (the status file is read by an
    /// operator's `status`).
    pub horizon: Option<Text>,
    /// Since when (RFC 3339) a transaction open on the source holds the resource back, and
    /// who holds it when the source tells; `None` when nothing does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held: Option<(String, Option<String>)>,
    /// How long the statement of the last incremental pull took; `None` before the first.
    /// Not serialized here: `status` reports it as a field of its own
    /// (`ResourceStatus::source_query`), since numbers do not survive a flattened struct's
    /// round trip through serde_json with `arbitrary_precision`.
    #[serde(skip)]
    pub source_query: Option<QueryTime>,
}

/// How long an incremental pull's statement took on the source
/// (`exchange_connectors::ScanTime`), in seconds, and how many rows it returned.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct QueryTime {
    /// From sending the statement to its first row (to its end when it returned none): long
    /// when no index supplies the cursor order (`check --connect` says which one to create).
    pub first_row_seconds: f64,
    /// From sending the statement to its end, waits for a full queue included.
    pub total_seconds: f64,
    /// Rows it returned.
    pub rows: u64,
}

impl QueryTime {
    /// The time of a scan that returned `rows` rows.
    pub fn of(time: exchange_connectors::ScanTime, rows: u64) -> QueryTime {
        QueryTime {
            first_row_seconds: time.first_row.as_secs_f64(),
            total_seconds: time.total.as_secs_f64(),
            rows,
        }
    }
}

/// Shared runtime facts, per resource.
#[derive(Debug, Clone, Default)]
pub struct Board(Arc<Mutex<BTreeMap<String, Runtime>>>);

impl Board {
    fn with(&self, resource: &str, f: impl FnOnce(&mut Runtime)) {
        let mut m = self.0.lock().expect("board lock");
        f(m.entry(resource.to_owned()).or_default());
    }
    /// Records a pull failure.
    pub fn set_pull_error(&self, resource: &str, e: &Text) {
        self.with(resource, |r| r.pull_error = Some(e.clone()));
    }
    /// Records a pull success and how it was bounded.
    pub fn pull_ok(&self, resource: &str, horizon: Option<Text>) {
        self.with(resource, |r| {
            r.pull_error = None;
            if horizon.is_some() {
                r.horizon = horizon;
            }
        });
    }
    /// Records whether a transaction open on the source held the last pull back.
    pub fn set_held(&self, resource: &str, held: Option<(String, Option<String>)>) {
        self.with(resource, |r| r.held = held);
    }
    /// Records how long the statement of an incremental pull took.
    pub fn set_query(&self, resource: &str, query: QueryTime) {
        self.with(resource, |r| r.source_query = Some(query));
    }
    /// Records a push failure.
    pub fn set_push_error(&self, resource: &str, e: &Text) {
        self.with(resource, |r| r.push_error = Some(e.clone()));
    }
    /// Records a push success.
    pub fn clear_push_error(&self, resource: &str) {
        self.with(resource, |r| r.push_error = None);
    }
    /// A copy of the facts of one resource.
    pub fn get(&self, resource: &str) -> Runtime {
        self.0
            .lock()
            .expect("board lock")
            .get(resource)
            .cloned()
            .unwrap_or_default()
    }
}
