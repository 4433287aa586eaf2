//! Display masks: common Chinese practice, on Unicode characters (never bytes), keeping
//! separators (`·`, `@`), and failing closed: a value a mask cannot parse, or too short to keep
//! anything, is masked completely (every character becomes `*`), never passed through.
//!
//! | mask | input | output |
//! |---|---|---|
//! | `name` | 张三 | 张* |
//! | `name` | 买买提·艾力 | 买**·** |
//! | `name` | 𠀾小明 (生僻字 outside the BMP) | 𠀾** |
//! | `name` | 张 | * |
//! | `citizen_id` | 11010519491231002X | 110105********002X |
//! | `citizen_id(1,2)` | 11010519491231002X | 1***************2X |
//! | `citizen_id` | 150102880730303 (15 digits, normalized first) | 150102********3035 |
//! | `citizen_id` | 1101 (not a valid ID) | **** |
//! | `mobile` | 13812345678 | 138****5678 |
//! | `address` | 北京市海淀区中关村大街1号 | 北京市海淀区******* |
//! | `address` | 内蒙古自治区呼和浩特市新城区xx路 | 内蒙古自治区呼和浩特市新城区*** |
//! | `address` | 广东省东莞市虎门镇连升路县前小区5栋 (县 after a road is no county) | 广东省东莞市************ |
//! | `address` | 广东省中山市石岐街道孙文小区3栋 (小区 is no district) | 广东省中山市********** |
//! | `bank_card` | 6228480402564890018 (Luhn-valid) | 622848*********0018 |
//! | `email` | dingding@126.com | d*******@126.com |
//! | `uscc` | 91350100M000100Y43 | 91350100********** |
//! | `property_unit` | 320505400202GB00001F00010069 | 320505400202GB*****F******** |
//! | `keep(3,4)` | ABCDEFGHIJ | ABC***GHIJ |
//! | `keep(3,4)` | ABCDEF (too short) | ****** |
//! | any | (empty) | (empty) |

use crate::identifier::{self, IdKind};

use crate::rule::Mask;

/// The character that replaces hidden ones.
pub const HIDDEN: char = '*';

/// Separators that names and other values keep in place.
fn is_separator(c: char) -> bool {
    matches!(c, '·' | '•' | '・' | '.' | '@' | ' ' | '-')
}

/// Every character replaced by `*` (the fail-closed result).
pub fn mask_all(s: &str) -> String {
    s.chars().map(|_| HIDDEN).collect()
}

/// Applies `mask` to `s`.
pub fn apply(mask: Mask, s: &str) -> String {
    if s.is_empty() {
        return String::new();
    }
    let out = match mask {
        Mask::Name => name(s),
        Mask::CitizenId { first, last } => identifier::normalize(IdKind::CitizenId, s)
            .ok()
            .map(|n| keep(&n, first, last)),
        Mask::Mobile if identifier::is_valid_mobile(s) => Some(keep(s, 3, 4)),
        Mask::Mobile => identifier::normalize(IdKind::Mobile, s)
            .ok()
            .map(|n| keep(&n, 3, 4)),
        Mask::Address => address(s),
        Mask::BankCard => bank_card(s),
        Mask::Email => email(s),
        Mask::Uscc => identifier::normalize(IdKind::Uscc, s)
            .ok()
            .map(|n| keep(&n, 8, 0)),
        Mask::PropertyUnit => identifier::normalize(IdKind::PropertyUnit, s)
            .ok()
            .map(|n| {
                n.char_indices()
                    .map(|(i, c)| if i < 14 || i == 19 { c } else { HIDDEN })
                    .collect()
            }),
        Mask::Keep { first, last } => Some(keep_separated(s, first, last)),
    };
    out.unwrap_or_else(|| mask_all(s))
}

/// Keeps `first` and `last` characters of `s` (which has no separators); a value with no more
/// characters than that is masked completely.
fn keep(s: &str, first: usize, last: usize) -> String {
    let n = s.chars().count();
    if n <= first + last {
        return mask_all(s);
    }
    s.chars()
        .enumerate()
        .map(|(i, c)| {
            if i < first || i >= n - last {
                c
            } else {
                HIDDEN
            }
        })
        .collect()
}

/// Like [`keep`], over the characters that are not separators; separators stay in place.
fn keep_separated(s: &str, first: usize, last: usize) -> String {
    let n = s.chars().filter(|c| !is_separator(*c)).count();
    if n <= first + last {
        return s
            .chars()
            .map(|c| if is_separator(c) { c } else { HIDDEN })
            .collect();
    }
    let mut i = 0;
    s.chars()
        .map(|c| {
            if is_separator(c) {
                return c;
            }
            let kept = i < first || i >= n - last;
            i += 1;
            if kept { c } else { HIDDEN }
        })
        .collect()
}

/// The first character that is not a separator is kept; every other one is hidden. A name of
/// one character is hidden completely.
fn name(s: &str) -> Option<String> {
    let s = s.trim();
    let letters = s.chars().filter(|c| !is_separator(*c)).count();
    if letters < 2 {
        return None;
    }
    let mut first = true;
    Some(
        s.chars()
            .map(|c| {
                if is_separator(c) {
                    c
                } else if first {
                    first = false;
                    c
                } else {
                    HIDDEN
                }
            })
            .collect(),
    )
}

/// Characters that mark a street, road, town, township, village, lane or house number: a
/// 区/县/旗 after one is below the county level.
const BELOW_COUNTY: &str = "街路镇乡道号村巷弄";

/// Of those, the ones no city name holds (镇, 乡 and 道 do: 镇江市, 新乡市, 宁乡市): a 市 after
/// one is no city.
const BELOW_CITY: &str = "街路号村巷弄";

/// Keeps the address through its district level: the first 区, 县 or 旗 that is a county-level
/// unit, found before any mark of something below a county ([`BELOW_COUNTY`], an ASCII digit,
/// a 区 of 小区, 社区, 园区, 景区 or 校区) and not above it (the 区 of 自治区, 特别行政区, 地区);
/// a 旗 only after 内蒙古 or a 盟, where banners are; none followed by another of 区/县/旗 (红旗区
/// ends at its 区). Without one, the county-level 市 (the second 市 when it directly follows the
/// first, else the first), found before any mark of something below a city ([`BELOW_CITY`], a
/// digit, a 区 of 小区 …, a 镇 or 道 directly before the 市, as in 虎门镇市场路). Nothing found, or
/// nothing left to hide: masked completely. A county whose name holds one of the marks (道里区,
/// or any county of 新乡市) is kept only to its city: failing closed means masking more.
fn address(s: &str) -> Option<String> {
    let chars: Vec<char> = s.chars().collect();
    let before = |i: usize, w: &str| {
        let w: Vec<char> = w.chars().collect();
        i >= w.len() && chars[i - w.len()..i] == w[..]
    };
    let residential =
        |i: usize| chars[i] == '区' && ["小", "社", "园", "景", "校"].iter().any(|w| before(i, w));
    let first =
        |mark: &dyn Fn(usize) -> bool| (0..chars.len()).find(|&i| mark(i)).unwrap_or(chars.len());
    let below_county =
        first(&|i| BELOW_COUNTY.contains(chars[i]) || chars[i].is_ascii_digit() || residential(i));
    let below_city = first(&|i| {
        BELOW_CITY.contains(chars[i])
            || chars[i].is_ascii_digit()
            || residential(i)
            || (matches!(chars[i], '镇' | '道') && chars.get(i + 1) == Some(&'市'))
    });
    let banners = |i: usize| {
        let text: String = chars[..i].iter().collect();
        text.contains("内蒙古") || text.contains('盟')
    };
    let district = (0..below_county).find(|&i| {
        let unit = match chars[i] {
            '区' => !(before(i, "自治") || before(i, "行政") || before(i, "地")),
            '县' => true,
            '旗' => banners(i),
            _ => false,
        };
        unit && !matches!(chars.get(i + 1), Some('区' | '县' | '旗'))
    });
    let end = match district {
        Some(i) => i,
        None => {
            let cities: Vec<usize> = (0..below_city).filter(|&i| chars[i] == '市').collect();
            match cities.as_slice() {
                [] => return None,
                [a] => *a,
                [a, b, ..] if b - a - 1 <= 4 => *b,
                [a, ..] => *a,
            }
        }
    };
    if end + 1 >= chars.len() {
        return None;
    }
    Some(
        chars
            .iter()
            .enumerate()
            .map(|(i, c)| if i <= end { *c } else { HIDDEN })
            .collect(),
    )
}

/// A Luhn-valid card number of 12 to 19 digits (spaces and dashes ignored): first 6 and last
/// 4 digits kept.
fn bank_card(s: &str) -> Option<String> {
    let digits: String = identifier::half_width(s)
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .collect();
    ((12..=19).contains(&digits.len()) && identifier::is_luhn_valid(&digits))
        .then(|| keep(&digits, 6, 4))
}

/// `local@domain`: the first character of the local part and the whole domain are kept; a
/// local part of one character is hidden completely.
fn email(s: &str) -> Option<String> {
    let (local, domain) = s.trim().rsplit_once('@')?;
    if local.is_empty() || domain.is_empty() || !domain.contains('.') {
        return None;
    }
    let masked = if local.chars().count() < 2 {
        mask_all(local)
    } else {
        keep(local, 1, 0)
    };
    Some(format!("{masked}@{domain}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &[(Mask, &str, &str)] = &[
        (Mask::Name, "张三", "张*"),
        (Mask::Name, "欧阳娜娜", "欧***"),
        (Mask::Name, "买买提·艾力", "买**·**"),
        (Mask::Name, "𠀾小明", "𠀾**"),
        (Mask::Name, "王𠀾𠀾", "王**"),
        (Mask::Name, "张", "*"),
        (Mask::Name, "𠀾", "*"),
        (Mask::Name, "", ""),
        (Mask::Name, "John Smith", "J*** *****"),
        (
            Mask::CitizenId { first: 6, last: 4 },
            "11010519491231002X",
            "110105********002X",
        ),
        (
            Mask::CitizenId { first: 6, last: 4 },
            "11010519491231002x",
            "110105********002X",
        ),
        (
            Mask::CitizenId { first: 1, last: 2 },
            "11010519491231002X",
            "1***************2X",
        ),
        (
            Mask::CitizenId { first: 6, last: 4 },
            "150102880730303",
            "150102********3035",
        ),
        (Mask::CitizenId { first: 6, last: 4 }, "1101", "****"),
        (
            Mask::CitizenId { first: 6, last: 4 },
            "110105194912310021",
            "******************",
        ),
        (Mask::CitizenId { first: 6, last: 4 }, "张三", "**"),
        (Mask::Mobile, "13812345678", "138****5678"),
        (Mask::Mobile, "+86 138-1234-5678", "138****5678"),
        (Mask::Mobile, "12345", "*****"),
        (
            Mask::Address,
            "北京市海淀区中关村大街1号",
            "北京市海淀区*******",
        ),
        (
            Mask::Address,
            "内蒙古自治区呼和浩特市新城区xx路",
            "内蒙古自治区呼和浩特市新城区***",
        ),
        (Mask::Address, "浙江省杭州市西湖区", "*********"),
        (
            Mask::Address,
            "江苏省苏州市昆山市玉山镇1号",
            "江苏省苏州市昆山市*****",
        ),
        (
            Mask::Address,
            "广东省东莞市南城街道市场路",
            "广东省东莞市*******",
        ),
        (Mask::Address, "河北省正定县", "******"),
        // A 区/县/旗 counts only as a county-level unit; otherwise the 市 rule, and more is
        // masked rather than less.
        (
            Mask::Address,
            "广东省东莞市虎门镇连升路县前小区5栋",
            "广东省东莞市************",
        ),
        (
            Mask::Address,
            "广东省中山市石岐街道孙文小区3栋",
            "广东省中山市**********",
        ),
        (Mask::Address, "吉林省长春市红旗街1号", "吉林省长春市*****"),
        (
            Mask::Address,
            "广东省中山市五星红旗小区",
            "广东省中山市******",
        ),
        (
            Mask::Address,
            "江苏省苏州市工业园区星湖街328号",
            "江苏省苏州市***********",
        ),
        (
            Mask::Address,
            "内蒙古自治区鄂尔多斯市准格尔旗薛家湾镇",
            "内蒙古自治区鄂尔多斯市准格尔旗****",
        ),
        (
            Mask::Address,
            "河南省新乡市红旗区人民路",
            "河南省新乡市******",
        ),
        (
            Mask::Address,
            "河南省安阳市文峰区人民路",
            "河南省安阳市文峰区***",
        ),
        (Mask::Address, "江苏省镇江市京口区", "江苏省镇江市***"),
        (
            Mask::Address,
            "黑龙江省哈尔滨市道里区中央大街",
            "黑龙江省哈尔滨市*******",
        ),
        (Mask::Address, "广东省虎门镇市场路", "*********"),
        (Mask::Address, "somewhere", "*********"),
        (Mask::BankCard, "6228480402564890018", "622848*********0018"),
        (
            Mask::BankCard,
            "6228 4804 0256 4890 018",
            "622848*********0018",
        ),
        (Mask::BankCard, "6228480402564890019", "*******************"),
        (Mask::Email, "dingding@126.com", "d*******@126.com"),
        (Mask::Email, "d@126.com", "*@126.com"),
        (Mask::Email, "not-an-email", "************"),
        (Mask::Uscc, "91350100M000100Y43", "91350100**********"),
        (Mask::Uscc, "91350100M000100Y44", "******************"),
        (
            Mask::PropertyUnit,
            "320505400202GB00001F00010069",
            "320505400202GB*****F********",
        ),
        (
            Mask::PropertyUnit,
            "320505400202GB00001F",
            "********************",
        ),
        (Mask::Keep { first: 3, last: 4 }, "ABCDEFGHIJ", "ABC***GHIJ"),
        (Mask::Keep { first: 3, last: 4 }, "ABCDEF", "******"),
        (Mask::Keep { first: 1, last: 0 }, "a.b@c.cn", "a.*@*.**"),
        (Mask::Keep { first: 0, last: 0 }, "秘密", "**"),
    ];

    #[test]
    fn masks_follow_the_documented_conventions() {
        for &(mask, input, expected) in TABLE {
            assert_eq!(apply(mask, input), expected, "{mask:?} {input:?}");
        }
    }

    #[test]
    fn masks_keep_the_number_of_characters_of_what_they_hide() {
        for &(mask, input, out) in TABLE {
            if matches!(mask, Mask::Name | Mask::Address | Mask::Keep { .. }) {
                assert_eq!(input.trim().chars().count(), out.chars().count(), "{input}");
            }
        }
    }

    proptest::proptest! {
        /// A masked value never shows a hidden character in its position: every position is
        /// either the input's character (kept) or `*`, and at least one non-separator
        /// character of a value with two or more is hidden.
        #[test]
        fn a_masked_value_never_shows_a_hidden_character(s in "[\\p{Han}a-zA-Z0-9·@\u{20000}-\u{2000F}]{0,20}", first in 0usize..5, last in 0usize..5) {
            for mask in [Mask::Name, Mask::Keep { first, last }, Mask::Address] {
                let out = apply(mask, &s);
                let input: Vec<char> = s.trim().chars().collect();
                let output: Vec<char> = out.chars().collect();
                proptest::prop_assert_eq!(input.len(), output.len());
                let mut hidden = 0;
                for (a, b) in input.iter().zip(&output) {
                    proptest::prop_assert!(a == b || *b == HIDDEN, "{:?} {:?} {:?}", mask, s, out);
                    if a != b { hidden += 1; }
                }
                if input.iter().any(|c| !is_separator(*c)) {
                    proptest::prop_assert!(hidden >= 1, "{:?} {:?} {:?}", mask, s, out);
                }
            }
        }

        #[test]
        fn identifier_masks_hide_the_middle_of_any_valid_id(d in "(11|33|44|65)0[1-9]0[1-9]19[5-9][0-9](0[1-9]|1[0-2])(0[1-9]|1[0-9]|2[0-8])[0-9]{3}") {
            let id = format!("{d}{}", crate::identifier::citizen_id_check(&d).unwrap());
            let out = apply(Mask::CitizenId { first: 6, last: 4 }, &id);
            proptest::prop_assert_eq!(&out[..6], &id[..6]);
            proptest::prop_assert_eq!(&out[14..], &id[14..]);
            proptest::prop_assert_eq!(&out[6..14], "********");
        }
    }
}
