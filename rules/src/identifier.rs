//! Identifiers of the domain: 公民身份号码 (GB 11643-1999), 统一社会信用代码 (GB 32100-2015),
//! 不动产单元号, mobile numbers. The one implementation of their normalization and validation:
//! the policy (pseudonyms, invalid keys) and the verification service both use it.
//!
//! Normalization comes before any comparison or pseudonym, so that joins across departments
//! do not miss: full-width characters become half-width (`１１０１` → `1101`, `Ｘ` → `X`),
//! surrounding spaces go, and per kind:
//!
//! | kind | normalization | valid when |
//! |---|---|---|
//! | `citizen_id` | spaces removed, `x` → `X`, 15 digits → 18 (`19` inserted before the year, check character appended) | 17 digits and the ISO 7064 MOD 11-2 check character; characters 1–6 a region code of GB/T 2260 ([`crate::region`]: the registration county, or its province where the county is not in the table); characters 7–14 a real calendar date from 1800-01-01 to today (UTC+8) |
//! | `uscc` | spaces removed, upper case | 18 characters of `0-9A-HJ-NPQRTUWXY`; characters 1–2 a registration authority and one of its organization categories (GB 32100, [`USCC_CATEGORIES`]); characters 3–8 digits, a region code of GB/T 2260 ([`crate::region`]); the GB 32100 check character |
//! | `property_unit` | spaces removed, upper case | 28 characters: 6+3+3 digits, 2 letters, 5 digits, one of `F L Q W`, 8 digits |
//! | `mobile` | spaces and dashes removed, `+86` / `0086` / `86` prefix removed | `1[3-9]` and 9 more digits |
//! | `other` | nothing more | not empty |
//!
//! | input | kind | normalized |
//! |---|---|---|
//! | ` 11010519491231002x ` | `citizen_id` | `11010519491231002X` |
//! | `150102880730303` | `citizen_id` | `150102198807303035` |
//! | `９１３１０１１０６６６００７２１７Ｔ` | `uscc` | `91310110666007217T` |
//! | `+86 138-0013-8000` | `mobile` | `13800138000` |
//!
//! An invalid value is reported with the best cleaned form ([`Invalid::cleaned`]: a 15-digit
//! number already as its 18 characters) and a reason that never contains the value.
//!
//! [`recognize`] is the looser test of the verification protocol's canonical form
//! (docs/PROTOCOL.md §11.3): check characters and structure only, no region table and no upper
//! bound on birth dates, so that a requester's canonical form never depends on the provider's
//! table or clock.

use exchange_protocol::lang::pick;

use crate::region;

const ID_WEIGHTS: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
const ID_CHECK: &[u8; 11] = b"10X98765432";
const USCC_CHARSET: &str = "0123456789ABCDEFGHJKLMNPQRTUWXY";
const USCC_WEIGHTS: [u32; 17] = [
    1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28,
];

/// What kind of identifier a column holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IdKind {
    /// 公民身份号码 (GB 11643-1999).
    CitizenId,
    /// 统一社会信用代码 (GB 32100-2015).
    Uscc,
    /// 不动产单元号 (28 characters, structure only).
    PropertyUnit,
    /// Mobile number (mainland China).
    Mobile,
    /// Anything else: trimmed and made half-width only.
    Other,
}

impl IdKind {
    /// Every kind, in documentation order.
    pub const ALL: [IdKind; 5] = [
        IdKind::CitizenId,
        IdKind::Uscc,
        IdKind::PropertyUnit,
        IdKind::Mobile,
        IdKind::Other,
    ];

    /// The name used in configuration and as the default pseudonym domain.
    pub fn as_str(self) -> &'static str {
        match self {
            IdKind::CitizenId => "citizen_id",
            IdKind::Uscc => "uscc",
            IdKind::PropertyUnit => "property_unit",
            IdKind::Mobile => "mobile",
            IdKind::Other => "other",
        }
    }

    /// Parses a kind as written in configuration.
    pub fn parse(s: &str) -> Result<IdKind, String> {
        IdKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "`{s}` is not an identifier kind; expected one of {}",
                    IdKind::ALL
                        .iter()
                        .map(|k| format!("\"{}\"", k.as_str()))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })
    }
}

impl std::fmt::Display for IdKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A value that is not a valid identifier of its kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// The value cleaned as far as possible (half-width, trimmed, per-kind cleanup): what a
    /// pseudonym of an invalid value is computed over.
    pub cleaned: String,
    /// What is wrong, without the value.
    pub reason: &'static str,
}

/// Full-width ASCII forms (U+FF01–U+FF5E) become their ASCII characters, the ideographic
/// space (U+3000) a space; everything else is kept.
pub fn half_width(s: &str) -> std::borrow::Cow<'_, str> {
    if s.is_ascii() {
        return std::borrow::Cow::Borrowed(s);
    }
    std::borrow::Cow::Owned(
        s.chars()
            .map(|c| match c {
                '\u{FF01}'..='\u{FF5E}' => char::from_u32(c as u32 - 0xFEE0).unwrap_or(c),
                '\u{3000}' => ' ',
                _ => c,
            })
            .collect(),
    )
}

/// Half-width, without any whitespace, ASCII upper case.
fn compact_upper(raw: &str) -> String {
    if raw
        .bytes()
        .all(|b| b.is_ascii_graphic() && !b.is_ascii_lowercase())
    {
        return raw.to_owned();
    }
    half_width(raw)
        .chars()
        .filter(|c| !c.is_whitespace())
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

/// The earliest birth date a 公民身份号码 may carry (documented in docs/CONFIG.md: older
/// dates are typing errors, not people).
pub const EARLIEST_BIRTH: (u32, u32, u32) = (1800, 1, 1);

/// `yyyymmdd` (8 ASCII digits) as (year, month, day) when it is a real calendar date from
/// [`EARLIEST_BIRTH`] on.
fn date_of(yyyymmdd: &[u8]) -> Option<(u32, u32, u32)> {
    let n = |r: std::ops::Range<usize>| {
        yyyymmdd.get(r)?.iter().try_fold(0u32, |acc, b| {
            b.is_ascii_digit().then(|| acc * 10 + u32::from(b - b'0'))
        })
    };
    let (y, m, d) = (n(0..4)?, n(4..6)?, n(6..8)?);
    let leap = (y.is_multiple_of(4) && !y.is_multiple_of(100)) || y.is_multiple_of(400);
    let days = match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return None,
    };
    ((y, m, d) >= EARLIEST_BIRTH && (1..=days).contains(&d)).then_some((y, m, d))
}

/// Whether `yyyymmdd` (8 ASCII digits) is a real calendar date from 1800-01-01 on.
fn is_date(yyyymmdd: &[u8]) -> bool {
    date_of(yyyymmdd).is_some()
}

/// Today in China (UTC+8), as (year, month, day): the latest birth date a 公民身份号码 may
/// carry.
fn today_in_china() -> (u32, u32, u32) {
    use chrono::Datelike;
    let offset = chrono::FixedOffset::east_opt(8 * 3600).expect("UTC+8 is a valid offset");
    let today = chrono::Utc::now().with_timezone(&offset).date_naive();
    (today.year() as u32, today.month(), today.day())
}

/// Whether `yyyymmdd` is a birth date: a real calendar date from 1800-01-01 to `today`.
fn is_birth_date(yyyymmdd: &[u8], today: (u32, u32, u32)) -> bool {
    date_of(yyyymmdd).is_some_and(|d| d <= today)
}

const CITIZEN_ID_FORM: &str = "not a valid 公民身份号码 (18 characters with a GB 11643 check character and a real birth date, or 15 digits)";
const CITIZEN_ID_FORM_ZH: &str =
    "不是有效的公民身份号码（应为 18 位、校验码符合 GB 11643 且出生日期真实，或 15 位数字）";
const USCC_FORM: &str =
    "not a valid 统一社会信用代码 (18 characters with a GB 32100 check character)";
const USCC_FORM_ZH: &str = "不是有效的统一社会信用代码（应为 18 位且校验码符合 GB 32100）";

/// How strictly [`normalize_as`] validates.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Check {
    /// Everything the standards say ([`normalize`]).
    Strict,
    /// Check characters and structure only ([`recognize`]).
    Form,
}

/// Normalizes `raw` as an identifier of `kind` and validates it (the table of the module
/// documentation).
pub fn normalize(kind: IdKind, raw: &str) -> Result<String, Invalid> {
    normalize_as(kind, raw, Check::Strict)
}

/// Normalizes `raw` as [`normalize`] does, but validates a 公民身份号码 and a 统一社会信用代码
/// by their form only, as the canonical form of verification claims does (docs/PROTOCOL.md
/// §11.3 step 3): a 公民身份号码 by its check character and a real birth date from 1800-01-01
/// on (no upper bound, the region not checked), a 统一社会信用代码 by its characters and check
/// character (nothing else checked). Other kinds as [`normalize`].
pub fn recognize(kind: IdKind, raw: &str) -> Result<String, Invalid> {
    normalize_as(kind, raw, Check::Form)
}

fn normalize_as(kind: IdKind, raw: &str, check: Check) -> Result<String, Invalid> {
    match kind {
        IdKind::CitizenId => citizen_id_of(compact_upper(raw), check),
        IdKind::Uscc => {
            let s = compact_upper(raw);
            let reason = if !is_uscc_form(&s) {
                Some(pick(USCC_FORM, USCC_FORM_ZH))
            } else if check == Check::Form {
                None
            } else {
                uscc_structure_error(&s)
            };
            match reason {
                None => Ok(s),
                Some(reason) => Err(Invalid { cleaned: s, reason }),
            }
        }
        IdKind::PropertyUnit => {
            let s = compact_upper(raw);
            if is_valid_property_unit(&s) {
                Ok(s)
            } else {
                Err(Invalid {
                    cleaned: s,
                    reason: pick(
                        "not a valid 不动产单元号 (28 characters: 12 digits, 2 letters, 5 digits, F/L/Q/W, 8 digits)",
                        "不是有效的不动产单元号（应为 28 位：12 位数字、2 个字母、5 位数字、F/L/Q/W、8 位数字）",
                    ),
                })
            }
        }
        IdKind::Mobile => mobile_of(raw),
        IdKind::Other => {
            let s = half_width(raw).trim().to_owned();
            if s.is_empty() {
                Err(Invalid {
                    cleaned: s,
                    reason: pick("empty", "为空"),
                })
            } else {
                Ok(s)
            }
        }
    }
}

/// A mobile number normalized and validated.
fn mobile_of(raw: &str) -> Result<String, Invalid> {
    let s: String = half_width(raw)
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .collect();
    let s = if let Some(rest) = s.strip_prefix("+86").or_else(|| s.strip_prefix("0086")) {
        rest.to_owned()
    } else if s.len() == 13 && s.starts_with("86") {
        s[2..].to_owned()
    } else {
        s
    };
    if is_valid_mobile(&s) {
        Ok(s)
    } else {
        Err(Invalid {
            cleaned: s,
            reason: pick(
                "not a valid mobile number (11 digits starting with 13 to 19)",
                "不是有效的手机号码（应为 13 至 19 开头的 11 位数字）",
            ),
        })
    }
}

/// The check character of a citizen ID from its first 17 digits (ISO 7064 MOD 11-2).
pub fn citizen_id_check(first17: &str) -> Option<char> {
    if first17.len() != 17 {
        return None;
    }
    let mut s = 0;
    for (c, w) in first17.bytes().zip(ID_WEIGHTS) {
        if !c.is_ascii_digit() {
            return None;
        }
        s += u32::from(c - b'0') * w;
    }
    Some(ID_CHECK[(s % 11) as usize] as char)
}

/// Normalizes a citizen ID: strips spaces, upper-cases `x`, converts 15 digits to 18.
/// Returns `None` when the result is not a valid 18-character number ([`normalize`]: check
/// character, region, birth date).
pub fn normalize_citizen_id(raw: &str) -> Option<String> {
    normalize(IdKind::CitizenId, raw).ok()
}

/// A compacted citizen ID converted to 18 characters and validated; when invalid, the value
/// (converted when it has 15 digits) and the reason.
fn citizen_id_of(s: String, check: Check) -> Result<String, Invalid> {
    let invalid = |cleaned: String, reason: &'static str| Err(Invalid { cleaned, reason });
    let n = if s.len() == 15 && s.bytes().all(|c| c.is_ascii_digit()) {
        let first17 = format!("{}19{}", &s[..6], &s[6..]);
        match citizen_id_check(&first17) {
            Some(check) => format!("{first17}{check}"),
            None => return invalid(s, pick(CITIZEN_ID_FORM, CITIZEN_ID_FORM_ZH)),
        }
    } else if s.len() == 18 {
        s
    } else {
        return invalid(s, pick(CITIZEN_ID_FORM, CITIZEN_ID_FORM_ZH));
    };
    let form = n.is_ascii()
        && is_date(&n.as_bytes()[6..14])
        && citizen_id_check(&n[..17]).is_some_and(|c| n.ends_with(c));
    if !form {
        return invalid(n, pick(CITIZEN_ID_FORM, CITIZEN_ID_FORM_ZH));
    }
    if check == Check::Form {
        return Ok(n);
    }
    if !region::is_citizen_region(&n[..6]) {
        return invalid(
            n,
            pick(
                "not a valid 公民身份号码: characters 1–6 are not a region code of GB/T 2260 (docs/CONFIG.md, Identifiers)",
                "不是有效的公民身份号码：第 1–6 位不是 GB/T 2260 行政区划代码（见 docs/CONFIG.md“标识符”）",
            ),
        );
    }
    if !is_birth_date(&n.as_bytes()[6..14], today_in_china()) {
        return invalid(
            n,
            pick(
                "not a valid 公民身份号码: the birth date is after today",
                "不是有效的公民身份号码：出生日期晚于今天",
            ),
        );
    }
    Ok(n)
}

/// The registration authorities (登记管理部门码, character 1) of GB 32100 and the
/// organization categories (机构类别码, character 2) each may assign: `1` 机构编制 (机关,
/// 事业单位, 群众团体, 其他), `2` 外交, `3` 司法行政, `4` 文化, `5` 民政 (社会团体, 民办非企业单位,
/// 基金会, 其他), `6` 旅游, `7` 宗教, `8` 工会, `9` 工商 (企业, 个体工商户, 农民专业合作社),
/// `A` 中央军委改革和编制办公室, `N` 农业, `Y` 其他.
pub const USCC_CATEGORIES: &[(char, &str)] = &[
    ('1', "1239"),
    ('2', "19"),
    ('3', "1234569"),
    ('4', "19"),
    ('5', "1239"),
    ('6', "129"),
    ('7', "129"),
    ('8', "19"),
    ('9', "123"),
    ('A', "19"),
    ('N', "1239"),
    ('Y', "1"),
];

/// Why a 统一社会信用代码 of valid form ([`is_uscc_form`]) breaks GB 32100's structure, if it
/// does: the registration authority and category (characters 1–2), the region (3–8).
fn uscc_structure_error(code: &str) -> Option<&'static str> {
    let mut chars = code.chars();
    let (authority, category) = (chars.next()?, chars.next()?);
    let known = USCC_CATEGORIES
        .iter()
        .any(|(a, cs)| *a == authority && cs.contains(category));
    if !known {
        return Some(pick(
            "not a valid 统一社会信用代码: characters 1–2 are not a registration authority and one of its organization categories (GB 32100)",
            "不是有效的统一社会信用代码：第 1–2 位不是 GB 32100 的登记管理部门码及其机构类别码",
        ));
    }
    if !region::is_registration_region(&code[2..8]) {
        return Some(pick(
            "not a valid 统一社会信用代码: characters 3–8 are not a region code of GB/T 2260 (docs/CONFIG.md, Identifiers)",
            "不是有效的统一社会信用代码：第 3–8 位不是 GB/T 2260 行政区划代码（见 docs/CONFIG.md“标识符”）",
        ));
    }
    None
}

/// The check character of a 统一社会信用代码 from its first 17 characters (GB 32100), or
/// `None` when they are not 17 characters of the code's character set.
pub fn uscc_check_char(first17: &str) -> Option<char> {
    let values: Option<Vec<u32>> = first17
        .chars()
        .map(|c| USCC_CHARSET.find(c).map(|i| i as u32))
        .collect();
    let values = values.filter(|v| v.len() == 17)?;
    let s: u32 = values.iter().zip(USCC_WEIGHTS).map(|(v, w)| v * w).sum();
    USCC_CHARSET.chars().nth(((31 - s % 31) % 31) as usize)
}

/// Whether `code` has the form of a 统一社会信用代码: 18 characters of its set, the last the
/// check character of the others (nothing else checked).
pub fn is_uscc_form(code: &str) -> bool {
    code.len() == 18
        && code.is_char_boundary(17)
        && uscc_check_char(&code[..17]).is_some_and(|c| code.ends_with(c))
}

/// Whether `code` is a valid 统一社会信用代码: its form ([`is_uscc_form`]), a registration
/// authority and organization category of GB 32100 ([`USCC_CATEGORIES`]), a region part of
/// digits that is a GB/T 2260 code ([`crate::region`]).
pub fn is_valid_uscc(code: &str) -> bool {
    is_uscc_form(code) && uscc_structure_error(code).is_none()
}

/// Whether `code` has the structure of a 不动产单元号: county code (6 digits), 地籍区 (3),
/// 地籍子区 (3), 宗地特征码 (2 letters), 宗地顺序号 (5 digits), 定着物特征码 (`F`, `L`, `Q`
/// or `W`), 定着物单元号 (8 digits). There is no check character.
pub fn is_valid_property_unit(code: &str) -> bool {
    let b = code.as_bytes();
    b.len() == 28
        && b[..12].iter().all(u8::is_ascii_digit)
        && b[12..14].iter().all(u8::is_ascii_uppercase)
        && b[14..19].iter().all(u8::is_ascii_digit)
        && matches!(b[19], b'F' | b'L' | b'Q' | b'W')
        && b[20..].iter().all(u8::is_ascii_digit)
}

/// Whether `digits` (ASCII digits only, at least one) pass the Luhn check (bank card numbers).
pub fn is_luhn_valid(digits: &str) -> bool {
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    let sum: u32 = digits
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b - b'0');
            if i % 2 == 1 {
                let d2 = d * 2;
                if d2 > 9 { d2 - 9 } else { d2 }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// Whether `s` is a mainland mobile number: `1[3-9]` and 9 more digits.
pub fn is_valid_mobile(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 11
        && b[0] == b'1'
        && (b'3'..=b'9').contains(&b[1])
        && b.iter().all(u8::is_ascii_digit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn card_numbers_pass_the_luhn_check_or_not() {
        assert!(is_luhn_valid("6228480402564890018"));
        assert!(is_luhn_valid("79927398713"));
        for bad in [
            "6228480402564890019",
            "",
            "6228 4804",
            "７９９２７３９８７１３",
        ] {
            assert!(!is_luhn_valid(bad), "{bad}");
        }
    }

    #[test]
    fn citizen_id_test_vectors_validate() {
        for id in [
            "11010519491231002X",
            "440524188001010014",
            "321083197812162119",
            "34052419800101001X",
        ] {
            assert_eq!(normalize_citizen_id(id).as_deref(), Some(id));
        }
        assert_eq!(
            normalize_citizen_id("11010519491231002x").as_deref(),
            Some("11010519491231002X")
        );
        assert_eq!(
            normalize_citizen_id("150102880730303").as_deref(),
            Some("150102198807303035")
        );
        assert_eq!(normalize_citizen_id("110105194912310021"), None);
        assert_eq!(normalize_citizen_id("1101"), None);
    }

    #[test]
    fn uscc_test_vectors_validate() {
        for code in [
            "91310110666007217T",
            "91350100M000100Y43",
            "91110000600037341L",
            "11330100MB0123456W",
        ] {
            assert!(is_valid_uscc(code), "{code}");
        }
        assert!(!is_valid_uscc("91310110666007217U"));
        assert!(!is_valid_uscc("9131011066600721"));
        assert!(!is_valid_uscc("91310110666OO7217T"));
    }

    /// (kind, input, normalized or the cleaned form of an invalid value, valid)
    const TABLE: &[(IdKind, &str, &str, bool)] = &[
        (
            IdKind::CitizenId,
            "11010519491231002X",
            "11010519491231002X",
            true,
        ),
        (
            IdKind::CitizenId,
            " 11010519491231002x ",
            "11010519491231002X",
            true,
        ),
        (
            IdKind::CitizenId,
            "110105 19491231 002X",
            "11010519491231002X",
            true,
        ),
        (
            IdKind::CitizenId,
            "１１０１０５１９４９１２３１００２ｘ",
            "11010519491231002X",
            true,
        ),
        (
            IdKind::CitizenId,
            "440524188001010014",
            "440524188001010014",
            true,
        ),
        (
            IdKind::CitizenId,
            "321083197812162119",
            "321083197812162119",
            true,
        ),
        (
            IdKind::CitizenId,
            "34052419800101001X",
            "34052419800101001X",
            true,
        ),
        (
            IdKind::CitizenId,
            "150102880730303",
            "150102198807303035",
            true,
        ),
        (
            IdKind::CitizenId,
            "110105194912310021",
            "110105194912310021",
            false,
        ),
        (
            IdKind::CitizenId,
            "110105194913310020",
            "110105194913310020",
            false,
        ),
        (IdKind::CitizenId, "1101", "1101", false),
        (IdKind::CitizenId, "", "", false),
        (IdKind::CitizenId, "张三", "张三", false),
        (
            IdKind::Uscc,
            "91310110666007217T",
            "91310110666007217T",
            true,
        ),
        (
            IdKind::Uscc,
            "91350100m000100y43",
            "91350100M000100Y43",
            true,
        ),
        (
            IdKind::Uscc,
            "９１１１００００６０００３７３４１Ｌ",
            "91110000600037341L",
            true,
        ),
        (
            IdKind::Uscc,
            "91310110666007217U",
            "91310110666007217U",
            false,
        ),
        (
            IdKind::Uscc,
            "91310110666OO7217T",
            "91310110666OO7217T",
            false,
        ),
        (
            IdKind::PropertyUnit,
            "320505400202GB00001F00010069",
            "320505400202GB00001F00010069",
            true,
        ),
        (
            IdKind::PropertyUnit,
            "320505400202gb00001f00010069",
            "320505400202GB00001F00010069",
            true,
        ),
        (
            IdKind::PropertyUnit,
            "320505400202GB00001X00010069",
            "320505400202GB00001X00010069",
            false,
        ),
        (
            IdKind::PropertyUnit,
            "320505400202GB00001F0001006",
            "320505400202GB00001F0001006",
            false,
        ),
        (IdKind::Mobile, "13800138000", "13800138000", true),
        (IdKind::Mobile, "+86 138-0013-8000", "13800138000", true),
        (IdKind::Mobile, "008613800138000", "13800138000", true),
        (IdKind::Mobile, "8613800138000", "13800138000", true),
        (
            IdKind::Mobile,
            "＋８６１３８００１３８０００",
            "13800138000",
            true,
        ),
        (IdKind::Mobile, "12800138000", "12800138000", false),
        (IdKind::Mobile, "010-12345678", "01012345678", false),
        (IdKind::Other, "  A-17 ", "A-17", true),
        (IdKind::Other, "Ａ－１７", "A-17", true),
        (IdKind::Other, "   ", "", false),
    ];

    #[test]
    fn identifiers_normalize_and_validate_by_kind() {
        for &(kind, input, expected, valid) in TABLE {
            match normalize(kind, input) {
                Ok(n) => {
                    assert!(valid, "{kind} {input:?} should be invalid, got {n:?}");
                    assert_eq!(n, expected, "{kind} {input:?}");
                }
                Err(e) => {
                    assert!(!valid, "{kind} {input:?} should be valid: {}", e.reason);
                    assert_eq!(e.cleaned, expected, "{kind} {input:?}");
                    assert!(!e.reason.contains(expected) || expected.is_empty());
                }
            }
        }
    }

    #[test]
    fn birth_dates_are_real_calendar_dates() {
        for (d, ok) in [
            ("19491231", true),
            ("20000229", true),
            ("19000229", false),
            ("20240230", false),
            ("19491301", false),
            ("19490100", false),
            ("17991231", false),
            ("1949123a", false),
        ] {
            assert_eq!(is_date(d.as_bytes()), ok, "{d}");
        }
    }

    #[test]
    fn birth_dates_run_from_1800_to_today() {
        let today = (2024, 6, 15);
        for (d, ok) in [
            ("18000101", true),
            ("17991231", false),
            ("20240615", true),
            ("20240616", false),
            ("20250101", false),
            ("20240230", false),
        ] {
            assert_eq!(is_birth_date(d.as_bytes(), today), ok, "{d}");
        }
        let (y, m, d) = today_in_china();
        assert!(y >= 2024 && (1..=12).contains(&m) && (1..=31).contains(&d));
    }

    /// A citizen ID of `first17` with its check character.
    fn id(first17: &str) -> String {
        format!("{first17}{}", citizen_id_check(first17).unwrap())
    }

    #[test]
    fn citizen_ids_need_a_gbt2260_region_and_a_birth_date_not_in_the_future() {
        for first17 in [
            "00000019491231002",
            "99999919491231002",
            "00010519491231002",
            "99010519491231002",
            "10010519491231002",
            "20010519491231002",
            "66010519491231002",
            "11000019491231002",
            "33010019491231002",
            "33710119491231002",
            "33000119491231002",
        ] {
            let e = normalize(IdKind::CitizenId, &id(first17)).unwrap_err();
            assert_eq!(e.cleaned, id(first17));
            assert!(e.reason.contains("region code"), "{first17}: {}", e.reason);
            assert!(!e.reason.contains(&first17[..6]), "{}", e.reason);
            // The form alone (verification's canonical form) does not check the region.
            assert_eq!(recognize(IdKind::CitizenId, &id(first17)), Ok(id(first17)));
        }
        // A 15-digit number with a made-up region: converted, then refused.
        let e = normalize(IdKind::CitizenId, "999999880730303").unwrap_err();
        assert_eq!(e.cleaned.len(), 18);
        assert!(e.cleaned.starts_with("99999919880730303"));
        // Registration counties not in the table are checked at province level; residence
        // permits of Hong Kong, Macao and Taiwan residents have the same form.
        for first17 in [
            "44052419800101001",
            "32108319781216211",
            "65290119800101001",
            "81000019800101001",
            "83000019800101001",
        ] {
            assert_eq!(normalize(IdKind::CitizenId, &id(first17)), Ok(id(first17)));
        }
        let next_year = today_in_china().0 + 1;
        let future = id(&format!("110105{next_year}0101001"));
        let e = normalize(IdKind::CitizenId, &future).unwrap_err();
        assert!(e.reason.contains("after today"), "{}", e.reason);
        assert_eq!(recognize(IdKind::CitizenId, &future), Ok(future.clone()));
        let old = id("11010517991231001");
        assert!(normalize(IdKind::CitizenId, &old).is_err());
        assert!(recognize(IdKind::CitizenId, &old).is_err());
    }

    /// A credit code of `first17` with its check character.
    fn uscc(first17: &str) -> String {
        format!("{first17}{}", uscc_check_char(first17).unwrap())
    }

    #[test]
    fn credit_codes_need_an_authority_a_category_and_a_region_of_digits() {
        assert_eq!(uscc_check_char("91310110666007217"), Some('T'));
        assert_eq!(uscc_check_char("9131011066600721"), None);
        assert_eq!(uscc_check_char("9131011066600721I"), None);
        for first17 in [
            "91310110666007217",
            "92330106MA2B3C4D5",
            "93330100MA2B3C4D5",
            "12100000400012345",
            "51100000500000123",
            "Y1330100MA2B3C4D5",
            "N2330106MA2B3C4D5",
            "91441999MA2B3C4D5",
        ] {
            assert!(is_valid_uscc(&uscc(first17)), "{first17}");
        }
        for (first17, needle) in [
            ("94310110666007217", "characters 1–2"),
            ("B1310110666007217", "characters 1–2"),
            ("Y2310110666007217", "characters 1–2"),
            ("01310110666007217", "characters 1–2"),
            ("9131A110666007217", "characters 3–8"),
            ("91000000666007217", "characters 3–8"),
            ("91999999666007217", "characters 3–8"),
            ("91200000666007217", "characters 3–8"),
            ("91337100666007217", "characters 3–8"),
        ] {
            let code = uscc(first17);
            assert!(!is_valid_uscc(&code), "{first17}");
            assert!(is_uscc_form(&code), "{first17}");
            let e = normalize(IdKind::Uscc, &code).unwrap_err();
            assert!(e.reason.contains(needle), "{first17}: {}", e.reason);
            assert_eq!(recognize(IdKind::Uscc, &code), Ok(code.clone()));
        }
    }

    #[test]
    fn kinds_parse_by_name_and_unknown_ones_list_the_known() {
        for k in IdKind::ALL {
            assert_eq!(IdKind::parse(k.as_str()), Ok(k));
        }
        let e = IdKind::parse("passport").unwrap_err();
        assert!(
            e.contains("\"citizen_id\"") && e.contains("\"other\""),
            "{e}"
        );
    }

    #[test]
    fn half_width_maps_full_width_ascii_and_keeps_the_rest() {
        assert_eq!(half_width("ＡＢＣ　１２３（张）"), "ABC 123(张)");
        assert!(matches!(half_width("abc"), std::borrow::Cow::Borrowed(_)));
    }

    proptest::proptest! {
        #[test]
        fn a_valid_citizen_id_is_its_own_normal_form(
            region in proptest::sample::select(vec!["110105", "330106", "440524", "652901", "419001", "810000"]),
            d in "(19[5-9][0-9]|20[01][0-9])(0[1-9]|1[0-2])(0[1-9]|1[0-9]|2[0-8])[0-9]{3}",
        ) {
            let d = format!("{region}{d}");
            let id = format!("{d}{}", citizen_id_check(&d).unwrap());
            proptest::prop_assert_eq!(normalize(IdKind::CitizenId, &id), Ok(id.clone()));
            proptest::prop_assert_eq!(normalize(IdKind::CitizenId, &id.to_lowercase()), Ok(id.clone()));
            // One changed digit is always caught by MOD 11-2.
            let mut bytes = id.clone().into_bytes();
            bytes[16] = if bytes[16] == b'9' { b'0' } else { bytes[16] + 1 };
            let changed = String::from_utf8(bytes).unwrap();
            proptest::prop_assert!(normalize(IdKind::CitizenId, &changed).is_err());
        }
    }
}
