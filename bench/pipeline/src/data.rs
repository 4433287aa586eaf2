//! The benchmark's table: synthetic residents of a city registry
//! ([`exchange_testkit::residents::registry`]), ten columns of the types and text such a table
//! has (18-character citizen IDs with valid check characters as the key, Chinese names and
//! addresses, dates, a decimal salary, a small integer, a timestamp cursor).
//!
//! The rows are written once as tab-separated text (PostgreSQL `COPY` text format and MariaDB
//! `LOAD DATA` defaults agree on it: no value holds a tab, newline or backslash) and loaded
//! into both databases, so every scenario moves the same rows.
//!
//! Keys are unique for up to [`MAX_ROWS`] rows: row `i` is born on a day derived bijectively
//! from `i / 1000` and carries `i % 1000` as its sequence code.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, bail};
use exchange_testkit::residents;

/// The most rows the key scheme keeps unique (24,000 birth days × 1,000 sequence codes).
pub use residents::MAX_ROWS;

/// The columns, in order.
pub const COLUMNS: &[&str] = &[
    "id_card",
    "name",
    "gender",
    "birth",
    "mobile",
    "address",
    "insured_since",
    "salary",
    "status",
    "updated_at",
];

/// The table in PostgreSQL, keyed as a hub's store needs.
pub fn pg_ddl(table: &str) -> String {
    format!(
        "CREATE TABLE {table} (
            id_card text PRIMARY KEY,
            name text NOT NULL,
            gender text NOT NULL,
            birth date NOT NULL,
            mobile text NOT NULL,
            address text NOT NULL,
            insured_since date NOT NULL,
            salary numeric(12,2) NOT NULL,
            status smallint NOT NULL,
            updated_at timestamptz NOT NULL)"
    )
}

/// The same table in MariaDB, with an index on the cursor columns or with the primary key alone.
pub fn mysql_ddl(table: &str, cursor_index: bool) -> String {
    let index = if cursor_index {
        ",\n            KEY cursor_order (updated_at, id_card)"
    } else {
        ""
    };
    format!(
        "CREATE TABLE {table} (
            id_card varchar(18) PRIMARY KEY,
            name varchar(32) NOT NULL,
            gender varchar(2) NOT NULL,
            birth date NOT NULL,
            mobile varchar(16) NOT NULL,
            address varchar(128) NOT NULL,
            insured_since date NOT NULL,
            salary decimal(12,2) NOT NULL,
            status smallint NOT NULL,
            updated_at datetime(6) NOT NULL{index}) DEFAULT CHARSET = utf8mb4"
    )
}

/// Writes `rows` residents to `path` as tab-separated lines.
pub fn write_tsv(path: &Path, rows: u64, seed: u64) -> anyhow::Result<()> {
    if rows > MAX_ROWS {
        bail!("at most {MAX_ROWS} rows (the key scheme keeps keys unique up to there)");
    }
    let file = std::fs::File::create(path).with_context(|| format!("create {}", path.display()))?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    for r in residents::registry(rows, seed) {
        writeln!(
            out,
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}.{:02}\t{}\t{}",
            r.id_card,
            r.name,
            r.gender,
            r.birth.format("%Y-%m-%d"),
            r.mobile,
            r.address,
            r.insured_since,
            r.salary_fen / 100,
            r.salary_fen % 100,
            r.status,
            r.updated_at.format("%Y-%m-%d %H:%M:%S%.6f")
        )?;
    }
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_are_unique_and_lines_have_every_column() {
        let dir = std::env::temp_dir().join(format!("exchange-bench-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("rows.tsv");
        write_tsv(&path, 3000, 1).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let mut keys = std::collections::HashSet::new();
        for line in text.lines() {
            let cols: Vec<&str> = line.split('\t').collect();
            assert_eq!(cols.len(), COLUMNS.len(), "{line}");
            assert!(keys.insert(cols[0].to_owned()), "duplicate key {}", cols[0]);
        }
        assert_eq!(keys.len(), 3000);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
