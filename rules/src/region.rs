//! Administrative division codes (GB/T 2260 行政区划代码): the region part of a 公民身份号码
//! (characters 1–6, GB 11643) and of a 统一社会信用代码 (characters 3–8, GB 32100).
//!
//! The table is `rules/data/gbt2260.txt`, built into the program (one `code name` a line, `#`
//! comments): every province-level code (34), the prefecture-level codes and the county codes
//! of a few municipalities. Updating it means adding lines and rebuilding (docs/CONFIG.md).
//! A 6-digit code `PPCCDD` reads as province `PP`, prefecture `CC`, county `DD`; GB/T 2260
//! numbers prefectures `01`–`20` and `51`–`70` (cities), `21`–`50` (地区, 自治州, 盟) and `90`
//! (counties under the province), and counties `01`–`99` (`00` is the prefecture itself).
//!
//! | use | accepted when |
//! |---|---|
//! | 公民身份号码 (the registration county) | the code is a county row of the table; or, where the county is not in the table, `PP0000` is a row (a province) and `CC` is `01`–`70` or `90` and `DD` is `01`–`99`; or it is `810000`, `820000` or `830000` (港澳台居民居住证 numbers, which have the 公民身份号码 form) |
//! | 统一社会信用代码 (the registration authority's area) | the code is a row of the table (province, prefecture or county); or `PP0000` is a row and `CC` is `01`–`70` or `90` (any `DD`); or it is `100000` (national registration authorities) |
//!
//! A county that is no longer in the current table (abolished, renamed, merged) stays valid on
//! the numbers issued under it: the check is at province level where the county is unknown,
//! and it does not depend on the birth year.

use std::collections::HashMap;
use std::sync::OnceLock;

/// The shipped table (see the module documentation).
const TABLE: &str = include_str!("../data/gbt2260.txt");

/// Region codes of 港澳台居民居住证 numbers (香港 `810000`, 澳门 `820000`, 台湾 `830000`):
/// accepted as the region of a number in 公民身份号码 form.
const RESIDENCE_PERMITS: [u32; 3] = [810000, 820000, 830000];

/// The code credit codes issued by national registration authorities carry.
const NATIONAL: u32 = 100000;

/// The table: code → name.
fn table() -> &'static HashMap<u32, &'static str> {
    static PARSED: OnceLock<HashMap<u32, &'static str>> = OnceLock::new();
    PARSED.get_or_init(|| parse(TABLE).expect("rules/data/gbt2260.txt is well formed (tested)"))
}

/// Reads a table: `code name` lines, `#` comments, blank lines; the first bad line is named.
fn parse(text: &str) -> Result<HashMap<u32, &str>, String> {
    let mut codes = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (code, name) = line.split_once(' ').unwrap_or((line, ""));
        let value = six_digits(code).filter(|_| !name.trim().is_empty());
        let Some(value) = value else {
            return Err(format!(
                "line {}: expected 6 digits, a space and a name",
                n + 1
            ));
        };
        if codes.insert(value, name.trim()).is_some() {
            return Err(format!("line {}: code {code} is listed twice", n + 1));
        }
    }
    Ok(codes)
}

/// The value of exactly 6 ASCII digits.
fn six_digits(code: &str) -> Option<u32> {
    (code.len() == 6 && code.bytes().all(|b| b.is_ascii_digit()))
        .then(|| code.parse().ok())
        .flatten()
}

/// The name the table gives `code` (6 digits), if it lists it.
pub fn name(code: &str) -> Option<&'static str> {
    six_digits(code).and_then(|c| table().get(&c).copied())
}

/// Whether the province `PP` of `code` is a province-level row (`PP0000`) of the table.
fn province_known(code: u32) -> bool {
    table().contains_key(&(code / 10000 * 10000))
}

/// Whether the prefecture part `CC` is numbered as GB/T 2260 numbers prefectures (`01`–`70`,
/// `90`).
fn prefecture_plausible(code: u32) -> bool {
    let cc = code / 100 % 100;
    (1..=70).contains(&cc) || cc == 90
}

/// Whether `code` (the first 6 characters of a 公民身份号码) is a registration county: see the
/// module documentation.
pub fn is_citizen_region(code: &str) -> bool {
    let Some(c) = six_digits(code) else {
        return false;
    };
    if RESIDENCE_PERMITS.contains(&c) {
        return true;
    }
    let county = c % 100;
    if county == 0 {
        return false;
    }
    table().contains_key(&c) || (province_known(c) && prefecture_plausible(c))
}

/// Whether `code` (characters 3–8 of a 统一社会信用代码) is the area of a registration
/// authority: see the module documentation.
pub fn is_registration_region(code: &str) -> bool {
    let Some(c) = six_digits(code) else {
        return false;
    };
    c == NATIONAL || table().contains_key(&c) || (province_known(c) && prefecture_plausible(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_table_parses_with_every_province_and_only_known_provinces() {
        let t = parse(TABLE).unwrap();
        let provinces: Vec<u32> = {
            let mut p: Vec<u32> = t.keys().copied().filter(|c| c % 10000 == 0).collect();
            p.sort_unstable();
            p
        };
        assert_eq!(
            provinces.iter().map(|p| p / 10000).collect::<Vec<_>>(),
            vec![
                11, 12, 13, 14, 15, 21, 22, 23, 31, 32, 33, 34, 35, 36, 37, 41, 42, 43, 44, 45, 46,
                50, 51, 52, 53, 54, 61, 62, 63, 64, 65, 71, 81, 82
            ]
        );
        for code in t.keys() {
            assert!(
                t.contains_key(&(code / 10000 * 10000)),
                "{code}: its province is not in the table"
            );
        }
        assert_eq!(name("330106"), Some("西湖区"));
        assert_eq!(name("710000"), Some("台湾省"));
        assert_eq!(name("999999"), None);
    }

    #[test]
    fn a_bad_table_line_is_named() {
        assert_eq!(parse("# c\n\n110000 北京市\n").unwrap().len(), 1);
        for (text, needle) in [
            ("110000\n", "line 1: expected"),
            ("11000 北京\n", "line 1: expected"),
            ("# c\n11000a 北京\n", "line 2: expected"),
            (
                "110000 北京\n110000 北京市\n",
                "line 2: code 110000 is listed twice",
            ),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.contains(needle), "{text:?}: {e}");
        }
    }

    #[test]
    fn citizen_regions_are_counties_of_known_provinces() {
        for (code, ok) in [
            ("110105", true),  // in the table
            ("330106", true),  // in the table
            ("440524", true),  // 潮阳县, abolished: province level
            ("321083", true),  // not in the table: province level
            ("340524", true),  // not in the table: province level
            ("150102", true),  // in the table
            ("419001", true),  // 济源: a county under the province (90)
            ("652901", true),  // a county of a 地区 (21–50)
            ("810000", true),  // 港澳台居民居住证
            ("820000", true),  // 港澳台居民居住证
            ("830000", true),  // 港澳台居民居住证
            ("000000", false), // no province
            ("999999", false), // no province
            ("100101", false), // 10 is no province
            ("200101", false), // 20 is no province
            ("660101", false), // 66 is not in the table
            ("110000", false), // a province, not a county
            ("330100", false), // a prefecture, not a county
            ("337101", false), // prefecture part 71 is not numbered so
            ("339901", false), // prefecture part 99 is not numbered so
            ("330001", false), // prefecture part 00 with a county
            ("710000", false), // a province, not a county
            ("11010", false),
            ("11010a", false),
            ("１１０１０５", false),
        ] {
            assert_eq!(is_citizen_region(code), ok, "{code}");
        }
    }

    #[test]
    fn registration_regions_are_any_level_of_known_provinces_or_national() {
        for (code, ok) in [
            ("110000", true), // a province
            ("350100", true), // a prefecture
            ("310110", true), // a county
            ("330100", true),
            ("100000", true), // national
            ("441999", true), // province level
            ("000000", false),
            ("999999", false),
            ("100100", false),
            ("660000", false),
            ("337100", false),
            ("330001", false),
            ("3301A0", false),
        ] {
            assert_eq!(is_registration_region(code), ok, "{code}");
        }
    }
}
