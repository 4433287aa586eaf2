//! Synthetic residents for the demo: plausible, never real. Citizen IDs carry valid GB 11643
//! check characters, mobile numbers match `^1[3-9]\d{9}$`.

use std::path::Path;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use exchange_agent::identifier::citizen_id_check;

const SURNAMES: &[&str] = &[
    "王", "李", "张", "刘", "陈", "杨", "黄", "赵", "吴", "周", "徐", "孙", "马", "朱", "胡", "郭",
    "何", "林", "高", "罗", "欧阳", "司马",
];
const GIVEN: &[&str] = &[
    "伟", "芳", "娜", "秀英", "敏", "静", "丽", "强", "磊", "军", "洋", "勇", "艳", "杰", "娟",
    "涛", "明", "超", "秀兰", "霞", "平", "刚", "桂英", "建国", "小红", "子涵", "雨桐", "浩然",
];
const DISTRICTS: &[(&str, &str)] = &[
    ("330102", "浙江省杭州市上城区"),
    ("330105", "浙江省杭州市拱墅区"),
    ("330106", "浙江省杭州市西湖区"),
    ("330108", "浙江省杭州市滨江区"),
    ("330109", "浙江省杭州市萧山区"),
    ("330110", "浙江省杭州市余杭区"),
    ("330122", "浙江省杭州市桐庐县"),
];

/// One synthetic resident.
pub struct Resident {
    /// 公民身份号码 with a valid check character.
    pub id_card: String,
    /// Chinese name.
    pub name: String,
    /// Mobile number.
    pub mobile: String,
    /// District (through 区/县).
    pub district: String,
    /// Date of joining social insurance.
    pub insured_since: String,
}

/// Generates `n` residents deterministically from `seed` (identifiers may repeat; callers
/// that need unique ones skip repeats).
pub fn generate(n: usize, seed: u64) -> Vec<Resident> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let (code, district) = DISTRICTS[rng.random_range(0..DISTRICTS.len())];
            let year = rng.random_range(1940..2006);
            let month = rng.random_range(1..=12);
            let day = rng.random_range(1..=28);
            let first17 = format!(
                "{code}{year:04}{month:02}{day:02}{:03}",
                rng.random_range(0..1000)
            );
            let check = citizen_id_check(&first17).expect("17 digits");
            let name = format!(
                "{}{}",
                SURNAMES[rng.random_range(0..SURNAMES.len())],
                GIVEN[rng.random_range(0..GIVEN.len())]
            );
            let mobile = format!(
                "1{}{:09}",
                rng.random_range(3..=9),
                rng.random_range(0..1_000_000_000u64)
            );
            Resident {
                id_card: format!("{first17}{check}"),
                name,
                mobile,
                district: district.to_owned(),
                insured_since: format!(
                    "{}-{:02}-01",
                    rng.random_range(1995..2025),
                    rng.random_range(1..=12)
                ),
            }
        })
        .collect()
}

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
