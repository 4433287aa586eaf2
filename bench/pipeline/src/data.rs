//! The benchmark's table: synthetic residents of a city registry, ten columns of the types and
//! text such a table has (18-character citizen IDs with valid check characters as the key,
//! Chinese names and addresses, dates, a decimal salary, a small integer, a timestamp cursor).
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
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The most rows the key scheme keeps unique (24,000 birth days × 1,000 sequence codes).
pub const MAX_ROWS: u64 = 24_000_000;

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

/// The same table in MariaDB.
pub fn mysql_ddl(table: &str) -> String {
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
            updated_at datetime(6) NOT NULL,
            KEY cursor_order (updated_at, id_card)) DEFAULT CHARSET = utf8mb4"
    )
}

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
const STREETS: &[&str] = &[
    "文三路",
    "天目山路",
    "延安路",
    "解放路",
    "庆春路",
    "江南大道",
    "文一西路",
    "学院路",
    "莫干山路",
    "滨盛路",
];

/// GB 11643 check character of the first 17 digits.
fn check_char(first17: &[u8]) -> char {
    const W: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
    let s: u32 = first17
        .iter()
        .zip(W)
        .map(|(d, w)| u32::from(d - b'0') * w)
        .sum();
    b"10X98765432"[(s % 11) as usize] as char
}

/// Writes `rows` residents to `path` as tab-separated lines.
pub fn write_tsv(path: &Path, rows: u64, seed: u64) -> anyhow::Result<()> {
    if rows > MAX_ROWS {
        bail!("at most {MAX_ROWS} rows (the key scheme keeps keys unique up to there)");
    }
    let file = std::fs::File::create(path).with_context(|| format!("create {}", path.display()))?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    let mut rng = StdRng::seed_from_u64(seed);
    let epoch = chrono::NaiveDate::from_ymd_opt(1940, 1, 1).expect("a date");
    let base = chrono::NaiveDate::from_ymd_opt(2024, 1, 1)
        .expect("a date")
        .and_hms_opt(0, 0, 0)
        .expect("a time");
    for i in 0..rows {
        let (code, district) = DISTRICTS[rng.random_range(0..DISTRICTS.len())];
        let day = (i / 1000) * 7919 % 24_000;
        let birth = epoch + chrono::Days::new(day);
        let first17 = format!("{code}{}{:03}", birth.format("%Y%m%d"), i % 1000);
        let check = check_char(first17.as_bytes());
        let name = format!(
            "{}{}",
            SURNAMES[rng.random_range(0..SURNAMES.len())],
            GIVEN[rng.random_range(0..GIVEN.len())]
        );
        let gender = if (i % 1000) % 2 == 1 { "男" } else { "女" };
        let mobile = format!(
            "1{}{:09}",
            rng.random_range(3..=9),
            rng.random_range(0..1_000_000_000u64)
        );
        let address = format!(
            "{district}{}{}号{}幢{}室",
            STREETS[rng.random_range(0..STREETS.len())],
            rng.random_range(1..999),
            rng.random_range(1..30),
            rng.random_range(101..2800)
        );
        let insured = format!(
            "{}-{:02}-01",
            rng.random_range(1995..2025),
            rng.random_range(1..=12)
        );
        let salary = rng.random_range(200_000..5_000_000u64);
        let status = rng.random_range(0..4);
        let updated = base + chrono::Duration::milliseconds(i as i64 * 10);
        writeln!(
            out,
            "{first17}{check}\t{name}\t{gender}\t{}\t{mobile}\t{address}\t{insured}\t{}.{:02}\t{status}\t{}",
            birth.format("%Y-%m-%d"),
            salary / 100,
            salary % 100,
            updated.format("%Y-%m-%d %H:%M:%S%.6f")
        )?;
    }
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_characters_match_the_public_vectors() {
        for id in [
            "11010519491231002X",
            "440524188001010014",
            "321083197812162119",
        ] {
            assert_eq!(check_char(&id.as_bytes()[..17]), id.chars().last().unwrap());
        }
    }

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
