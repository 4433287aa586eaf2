//! Synthetic residents for the demo: plausible, never real (the test kit's generator,
//! [`exchange_testkit::residents`]). Citizen IDs carry valid GB 11643 check characters, mobile
//! numbers match `^1[3-9]\d{9}$`.

use std::path::Path;

/// `n` residents from a seed, deterministic (the kit's generator; it returns
/// [`exchange_testkit::residents::Resident`]s).
pub use exchange_testkit::residents::generate;

/// Creates `path` as a SQLite business database with table `insured_person` holding `n`
/// residents (replacing an existing file).
pub fn write_business_db(path: &Path, n: usize) -> anyhow::Result<()> {
    let _ = std::fs::remove_file(path);
    let mut conn = rusqlite::Connection::open(path)?;
    conn.execute_batch(
        "CREATE TABLE insured_person (
            id INTEGER PRIMARY KEY,
            id_card TEXT NOT NULL UNIQUE,
            name TEXT NOT NULL,
            mobile TEXT,
            district TEXT,
            insured_since TEXT,
            internal_note TEXT,
            updated_at TEXT NOT NULL
        );",
    )?;
    let tx = conn.transaction()?;
    {
        let mut insert = tx.prepare(
            "INSERT INTO insured_person (id_card, name, mobile, district, insured_since, internal_note, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, strftime('%Y-%m-%dT%H:%M:%f', 'now', '-1 minute'))",
        )?;
        let mut seen = std::collections::HashSet::new();
        for r in generate(n * 2, 20261122) {
            if seen.len() == n {
                break;
            }
            if !seen.insert(r.id_card.clone()) {
                continue;
            }
            insert.execute(rusqlite::params![
                r.id_card,
                r.name,
                r.mobile,
                r.district,
                r.insured_since,
                "内部备注：不得共享"
            ])?;
        }
    }
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use exchange_agent::identifier::normalize_citizen_id;

    #[test]
    fn synthetic_residents_have_valid_identifiers() {
        for r in generate(2000, 1) {
            assert_eq!(
                normalize_citizen_id(&r.id_card).as_deref(),
                Some(r.id_card.as_str())
            );
            assert!(
                r.mobile.len() == 11
                    && r.mobile.starts_with('1')
                    && (b'3'..=b'9').contains(&r.mobile.as_bytes()[1]),
                "{}",
                r.mobile
            );
            assert!(!r.name.is_empty());
        }
    }
}
