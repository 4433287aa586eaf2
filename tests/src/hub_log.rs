//! What a test that kills the agent at random moments needs to read afterwards: triggers that
//! log, inside the hub's own SQLite transactions, every record write and every batch applied
//! (so the log is exactly what the hub committed), and the agent's log file.

/// Triggers on the hub's SQLite store that log every record write and every batch applied.
/// They run inside the hub's own transaction, so the log is exactly what was committed.
pub const INSTRUMENT: &str = "
CREATE TABLE test_record_writes (n INTEGER PRIMARY KEY, key TEXT NOT NULL, version INTEGER);
CREATE TRIGGER test_record_insert AFTER INSERT ON records BEGIN
  INSERT INTO test_record_writes (key, version) VALUES (NEW.key, json_extract(NEW.fields, '$.version'));
END;
CREATE TRIGGER test_record_update AFTER UPDATE ON records BEGIN
  INSERT INTO test_record_writes (key, version) VALUES (NEW.key, json_extract(NEW.fields, '$.version'));
END;
CREATE TABLE test_batches (n INTEGER PRIMARY KEY, stream TEXT NOT NULL, seq INTEGER NOT NULL);
CREATE TRIGGER test_stream_insert AFTER INSERT ON streams BEGIN
  INSERT INTO test_batches (stream, seq) VALUES (NEW.stream, NEW.last_seq);
END;
CREATE TRIGGER test_stream_update AFTER UPDATE ON streams BEGIN
  INSERT INTO test_batches (stream, seq) VALUES (NEW.stream, NEW.last_seq);
END;
";

/// Number of batches the hub has applied so far.
pub fn batches_applied(hub_db: &rusqlite::Connection) -> i64 {
    hub_db
        .query_row("SELECT count(*) FROM test_batches", [], |r| r.get(0))
        .unwrap()
}

/// Checks, from the log the triggers keep, that every batch was applied once, in seq order,
/// and that no row was written twice; returns how many batches were applied.
pub fn assert_applied_once_in_order(hub_db: &rusqlite::Connection) -> usize {
    let seqs: Vec<i64> = hub_db
        .prepare("SELECT seq FROM test_batches ORDER BY n")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        seqs,
        (1..=seqs.len() as i64).collect::<Vec<_>>(),
        "batches applied once each, in order"
    );
    let twice: i64 = hub_db
        .query_row(
            "SELECT count(*) FROM (SELECT key FROM test_record_writes GROUP BY key HAVING count(*) > 1)",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(twice, 0, "{twice} rows were written more than once");
    seqs.len()
}

/// Appends a line to the agent's log (a round's heading).
pub fn append(log: &std::path::Path, line: &str) {
    use std::io::Write as _;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    f.write_all(line.as_bytes()).unwrap();
}

/// The last 30 lines of the agent's log.
pub fn tail(log: &std::path::Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}
