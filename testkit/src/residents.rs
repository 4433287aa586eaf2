//! Synthetic residents of a city registry: plausible, never real. Citizen IDs carry valid
//! GB 11643 check characters, names and addresses are Chinese, mobile numbers match
//! `^1[3-9]\d{9}$`.
//!
//! One [`Generator`] draws every value from a random sequence seeded by the caller, so a seed
//! gives the same residents on every run and machine. It makes residents of two shapes, each
//! drawing the same values in the same order as long as it exists (a change here changes what
//! the benchmark loads and what the demo shows):
//! - [`Resident`] ([`generate`]), the demo's: born on a random day with a random sequence
//!   code, so identifiers may repeat;
//! - [`RegistryRow`] ([`registry`]), the benchmark's table of ten columns: row `i` is born on
//!   a day derived bijectively from `i / 1000` and carries `i % 1000` as its sequence code, so
//!   keys are unique for up to [`MAX_ROWS`] rows.

use chrono::{NaiveDate, NaiveDateTime};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The most rows [`registry`] keeps keys unique for (24,000 birth days × 1,000 sequence codes).
pub const MAX_ROWS: u64 = 24_000_000;

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

/// One synthetic resident, as the demo's business database holds them.
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

/// One row of the benchmark's registry table: ten columns of the types such a table has.
pub struct RegistryRow {
    /// 公民身份号码 with a valid check character; unique among the rows of one [`registry`].
    pub id_card: String,
    /// Chinese name.
    pub name: String,
    /// `男` or `女`, from the sequence code (odd for men, as in the number).
    pub gender: &'static str,
    /// Date of birth, as in the number.
    pub birth: NaiveDate,
    /// Mobile number.
    pub mobile: String,
    /// Street address in the number's district.
    pub address: String,
    /// Date of joining social insurance, `YYYY-MM-01`.
    pub insured_since: String,
    /// Monthly salary in fen (hundredths of a yuan).
    pub salary_fen: u64,
    /// A small status code, 0 to 3.
    pub status: i32,
    /// The change timestamp: row `i` is 10 ms after row `i - 1`, from 2024-01-01 00:00.
    pub updated_at: NaiveDateTime,
}

/// Draws residents from a random sequence seeded by the caller.
pub struct Generator {
    /// Every random value comes from here, in the order the shapes draw them.
    rng: StdRng,
}

impl Generator {
    /// A generator whose residents are determined by `seed`.
    pub fn new(seed: u64) -> Generator {
        Generator {
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// A resident born on a random day between 1940 and 2005 (identifiers may repeat).
    pub fn resident(&mut self) -> Resident {
        let (code, district) = self.district();
        let year = self.rng.random_range(1940..2006);
        let month = self.rng.random_range(1..=12);
        let day = self.rng.random_range(1..=28);
        let sequence = self.rng.random_range(0..1000);
        let id_card = citizen_id(format!("{code}{year:04}{month:02}{day:02}{sequence:03}"));
        Resident {
            id_card,
            name: self.name(),
            mobile: self.mobile(),
            district: district.to_owned(),
            insured_since: self.insured_since(),
        }
    }

    /// Row `i` of the registry table (its key is unique for `i` below [`MAX_ROWS`]).
    pub fn registry_row(&mut self, i: u64) -> RegistryRow {
        let (code, district) = self.district();
        let epoch = NaiveDate::from_ymd_opt(1940, 1, 1).expect("a date");
        let birth = epoch + chrono::Days::new((i / 1000) * 7919 % 24_000);
        let sequence = i % 1000;
        let id_card = citizen_id(format!("{code}{}{sequence:03}", birth.format("%Y%m%d")));
        let start = NaiveDate::from_ymd_opt(2024, 1, 1)
            .expect("a date")
            .and_hms_opt(0, 0, 0)
            .expect("a time");
        RegistryRow {
            id_card,
            name: self.name(),
            gender: if sequence % 2 == 1 { "男" } else { "女" },
            birth,
            mobile: self.mobile(),
            address: self.address(district),
            insured_since: self.insured_since(),
            salary_fen: self.rng.random_range(200_000..5_000_000u64),
            status: self.rng.random_range(0..4),
            updated_at: start + chrono::Duration::milliseconds(i as i64 * 10),
        }
    }

    /// A district: its administrative code and its name through 区/县.
    fn district(&mut self) -> (&'static str, &'static str) {
        DISTRICTS[self.rng.random_range(0..DISTRICTS.len())]
    }

    /// A surname and a given name.
    fn name(&mut self) -> String {
        format!(
            "{}{}",
            SURNAMES[self.rng.random_range(0..SURNAMES.len())],
            GIVEN[self.rng.random_range(0..GIVEN.len())]
        )
    }

    /// Eleven digits: `1`, `3` to `9`, nine more.
    fn mobile(&mut self) -> String {
        format!(
            "1{}{:09}",
            self.rng.random_range(3..=9),
            self.rng.random_range(0..1_000_000_000u64)
        )
    }

    /// The first of a month between 1995 and 2024.
    fn insured_since(&mut self) -> String {
        format!(
            "{}-{:02}-01",
            self.rng.random_range(1995..2025),
            self.rng.random_range(1..=12)
        )
    }

    /// A street, a number, a building and a flat in `district`.
    fn address(&mut self, district: &str) -> String {
        format!(
            "{district}{}{}号{}幢{}室",
            STREETS[self.rng.random_range(0..STREETS.len())],
            self.rng.random_range(1..999),
            self.rng.random_range(1..30),
            self.rng.random_range(101..2800)
        )
    }
}

/// Generates `n` residents deterministically from `seed` (identifiers may repeat; callers
/// that need unique ones skip repeats).
pub fn generate(n: usize, seed: u64) -> Vec<Resident> {
    let mut generator = Generator::new(seed);
    (0..n).map(|_| generator.resident()).collect()
}

/// The first `rows` rows of the registry table drawn from `seed`, in order (keys unique when
/// `rows` is at most [`MAX_ROWS`]).
pub fn registry(rows: u64, seed: u64) -> impl Iterator<Item = RegistryRow> {
    let mut generator = Generator::new(seed);
    (0..rows).map(move |i| generator.registry_row(i))
}

/// The 18-character citizen ID of its first 17 digits: with its check character.
fn citizen_id(first17: String) -> String {
    let check = check_char(first17.as_bytes());
    format!("{first17}{check}")
}

/// GB 11643 check character of the first 17 digits (ISO 7064 MOD 11-2). Computed here, not
/// by the code under test, so the synthetic data does not take the agent's word for it.
fn check_char(first17: &[u8]) -> char {
    const W: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
    let s: u32 = first17
        .iter()
        .zip(W)
        .map(|(d, w)| u32::from(d - b'0') * w)
        .sum();
    b"10X98765432"[(s % 11) as usize] as char
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
    fn the_same_seed_gives_the_same_residents() {
        let line = |r: &Resident| format!("{} {} {} {}", r.id_card, r.name, r.mobile, r.district);
        let a: Vec<String> = generate(50, 9).iter().map(line).collect();
        let b: Vec<String> = generate(50, 9).iter().map(line).collect();
        assert_eq!(a, b);
        let c: Vec<String> = generate(50, 10).iter().map(line).collect();
        assert_ne!(a, c);
    }

    #[test]
    fn registry_keys_are_unique_and_rows_are_numbered_in_time() {
        let rows: Vec<RegistryRow> = registry(3000, 1).collect();
        let keys: std::collections::HashSet<&str> = rows.iter().map(|r| &*r.id_card).collect();
        assert_eq!(keys.len(), 3000);
        assert!(rows.windows(2).all(|w| w[0].updated_at < w[1].updated_at));
        assert!(rows.iter().all(|r| r.id_card.len() == 18 && r.status < 4));
    }
}
