//! Field rules as written in `[resources.fields]`, parsed once at configuration time, and the
//! source types each rule accepts.
//!
//! | text | rule |
//! |---|---|
//! | `plain` | delivered as converted |
//! | `drop` | never read, never delivered |
//! | `mask:name`, `mask:citizen_id`, `mask:citizen_id(1,2)`, `mask:mobile`, `mask:address`, `mask:bank_card`, `mask:email`, `mask:uscc`, `mask:property_unit`, `mask:keep(3,4)` | [`crate::mask`] |
//! | `pseudonym` | [`crate::pseudonym`] (keyed HMAC-SM3) |
//! | `generalize:year`, `generalize:year_month`, `generalize:age_band(10)` | [`crate::generalize`] |
//! | `fpe:digits` | [`crate::fpe`] (FF1 over SM4, of the value normalized as its identifier kind) |
//!
//! Unkeyed hashes (`hash`, `sha256`, `sm3`, `md5` …) are refused with the reason: a citizen ID
//! has about 10¹¹ plausible values, so its plain hash is reversed by enumeration.

use crate::identifier::IdKind;
use exchange_protocol::tr;

/// A display mask (see [`crate::mask`] for the conventions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mask {
    /// 张三 → 张*; 买买提·艾力 → 买**·**.
    Name,
    /// Keep the first and last characters of a valid 公民身份号码 (6 and 4 by default).
    CitizenId {
        /// Characters kept at the start.
        first: usize,
        /// Characters kept at the end.
        last: usize,
    },
    /// 138****5678.
    Mobile,
    /// Keep through the district level (区/县/旗/市).
    Address,
    /// Luhn-valid card: first 6 and last 4 digits.
    BankCard,
    /// First character of the local part and the domain.
    Email,
    /// First 8 characters of a valid 统一社会信用代码.
    Uscc,
    /// First 14 characters and the 定着物特征码 of a 不动产单元号.
    PropertyUnit,
    /// Keep `first` and `last` characters, mask the rest.
    Keep {
        /// Characters kept at the start.
        first: usize,
        /// Characters kept at the end.
        last: usize,
    },
}

/// A generalization (see [`crate::generalize`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Generalize {
    /// Date → `YYYY`.
    Year,
    /// Date → `YYYY-MM`.
    YearMonth,
    /// Age → band of this width, `40-49`.
    AgeBand(u32),
}

/// What happens to a field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    /// Delivered as converted.
    Plain,
    /// Never read, never delivered.
    Drop,
    /// A display mask.
    Mask(Mask),
    /// A keyed pseudonym of the normalized value.
    Pseudonym {
        /// How the value is normalized first.
        kind: IdKind,
        /// The pseudonym domain (default: the kind's name).
        domain: String,
    },
    /// A coarser value.
    Generalize(Generalize),
    /// Format-preserving encryption of the digits (FF1 over SM4) of the value normalized as
    /// its identifier kind ([`crate::fpe::FpeKey::apply_identifier`]).
    FpeDigits {
        /// How the value is normalized first (`other`: not at all).
        kind: IdKind,
        /// The FF1 tweak (default: the identifier kind's name).
        domain: String,
    },
}

impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rule::Plain => f.write_str("plain"),
            Rule::Drop => f.write_str("drop"),
            Rule::Mask(m) => match m {
                Mask::Name => f.write_str("mask:name"),
                Mask::CitizenId { first: 6, last: 4 } => f.write_str("mask:citizen_id"),
                Mask::CitizenId { first, last } => write!(f, "mask:citizen_id({first},{last})"),
                Mask::Mobile => f.write_str("mask:mobile"),
                Mask::Address => f.write_str("mask:address"),
                Mask::BankCard => f.write_str("mask:bank_card"),
                Mask::Email => f.write_str("mask:email"),
                Mask::Uscc => f.write_str("mask:uscc"),
                Mask::PropertyUnit => f.write_str("mask:property_unit"),
                Mask::Keep { first, last } => write!(f, "mask:keep({first},{last})"),
            },
            Rule::Pseudonym { kind, domain } => write!(f, "pseudonym({kind}, domain {domain})"),
            Rule::Generalize(Generalize::Year) => f.write_str("generalize:year"),
            Rule::Generalize(Generalize::YearMonth) => f.write_str("generalize:year_month"),
            Rule::Generalize(Generalize::AgeBand(n)) => write!(f, "generalize:age_band({n})"),
            Rule::FpeDigits { domain, .. } => write!(f, "fpe:digits(domain {domain})"),
        }
    }
}

/// The rules `check` lists when a rule is not known.
const EXPECTED: &str = "expected \"plain\", \"drop\", \"mask:name\", \"mask:citizen_id\", \"mask:mobile\", \"mask:address\", \"mask:bank_card\", \"mask:email\", \"mask:uscc\", \"mask:property_unit\", \"mask:keep(FIRST,LAST)\", \"pseudonym\", \"generalize:year\", \"generalize:year_month\", \"generalize:age_band(WIDTH)\" or \"fpe:digits\"";
/// [`EXPECTED`] in Chinese.
const EXPECTED_ZH: &str = "应为 \"plain\"、\"drop\"、\"mask:name\"、\"mask:citizen_id\"、\"mask:mobile\"、\"mask:address\"、\"mask:bank_card\"、\"mask:email\"、\"mask:uscc\"、\"mask:property_unit\"、\"mask:keep(开头保留数,结尾保留数)\"、\"pseudonym\"、\"generalize:year\"、\"generalize:year_month\"、\"generalize:age_band(宽度)\" 或 \"fpe:digits\"";

/// `name(a,b)` → (`name`, [a, b]); `name` → (`name`, []).
fn call(s: &str) -> Result<(&str, Vec<usize>), String> {
    let Some((name, rest)) = s.split_once('(') else {
        return Ok((s, Vec::new()));
    };
    let args = rest
        .strip_suffix(')')
        .ok_or_else(|| tr!("`{s}`: missing `)`", "`{s}`：缺少 `)`"))?;
    let args = args
        .split(',')
        .map(|a| {
            a.trim().parse::<usize>().map_err(|_| {
                tr!(
                    "`{s}`: `{}` is not a whole number",
                    "`{s}`：`{}` 不是非负整数",
                    a.trim()
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((name, args))
}

/// Why an unkeyed hash rule `s` is refused.
fn unkeyed_hash(s: &str) -> String {
    tr!(
        "`{s}` is an unkeyed hash, which is refused: a citizen ID has about 10^11 plausible values, so its plain hash is reversed by enumeration in hours; use \"pseudonym\" (HMAC-SM3 under the key in [policy] pseudonym_key_file)",
        "`{s}` 是不带密钥的哈希，不予接受：公民身份号码只有约 10^11 种可能取值，普通哈希几小时内即可被穷举还原；请改用 \"pseudonym\"（以 [policy] pseudonym_key_file 中的密钥计算 HMAC-SM3）"
    )
}

/// `s` (`mask:keep`, `mask:citizen_id`) lacks its two numbers.
fn two_numbers(s: &str, head: &str, name: &str) -> String {
    tr!(
        "`{s}` needs two numbers: characters kept at the start and at the end, e.g. `{head}:{name}(3,4)`",
        "`{s}` 需要两个数：开头和结尾各保留几个字符，例如 `{head}:{name}(3,4)`"
    )
}

/// `s` (`mask:citizen_id(first,last)`) would keep all 18 characters.
fn hides_nothing(s: &str, first: usize, last: usize) -> String {
    tr!(
        "`{s}` keeps {first}+{last} of 18 characters: nothing would be hidden",
        "`{s}` 在 18 个字符中保留 {first}+{last} 个：没有任何字符被遮蔽"
    )
}

/// `s` (`generalize:age_band`) lacks a band width from 1 to 100.
fn band_width(s: &str) -> String {
    tr!(
        "`{s}` needs the band width in years, 1 to 100, e.g. `generalize:age_band(10)`",
        "`{s}` 需要年龄段的宽度（岁数），1 到 100，例如 `generalize:age_band(10)`"
    )
}

impl Rule {
    /// Parses a rule as written; `kind` is the field's identifier kind and `domain` its
    /// configured pseudonym/FPE domain.
    pub fn parse(text: &str, kind: IdKind, domain: Option<&str>) -> Result<Rule, String> {
        let s = text.trim();
        let lower = s.to_ascii_lowercase();
        if ["hash", "sha", "md5", "sm3", "digest"]
            .iter()
            .any(|h| lower.starts_with(h))
        {
            return Err(unkeyed_hash(s));
        }
        let given = domain;
        let domain = given.unwrap_or(kind.as_str()).to_owned();
        let (head, arg) = s.split_once(':').unwrap_or((s, ""));
        let (name, args) = call(arg)?;
        let no_args = |r: Rule| {
            if args.is_empty() {
                Ok(r)
            } else {
                Err(tr!("`{s}` takes no parameters", "`{s}` 不接受参数"))
            }
        };
        let two = |default: Option<(usize, usize)>| -> Result<(usize, usize), String> {
            match (args.as_slice(), default) {
                ([a, b], _) => Ok((*a, *b)),
                ([], Some(d)) => Ok(d),
                _ => Err(two_numbers(s, head, name)),
            }
        };
        let rule = match (head, name) {
            ("plain", "") => Rule::Plain,
            ("drop", "") => Rule::Drop,
            ("pseudonym", "") => Rule::Pseudonym { kind, domain },
            ("mask", "name") => no_args(Rule::Mask(Mask::Name))?,
            ("mask", "citizen_id") => {
                let (first, last) = two(Some((6, 4)))?;
                if first + last >= 18 {
                    return Err(hides_nothing(s, first, last));
                }
                Rule::Mask(Mask::CitizenId { first, last })
            }
            ("mask", "mobile") => no_args(Rule::Mask(Mask::Mobile))?,
            ("mask", "address") => no_args(Rule::Mask(Mask::Address))?,
            ("mask", "bank_card") => no_args(Rule::Mask(Mask::BankCard))?,
            ("mask", "email") => no_args(Rule::Mask(Mask::Email))?,
            ("mask", "uscc") => no_args(Rule::Mask(Mask::Uscc))?,
            ("mask", "property_unit") => no_args(Rule::Mask(Mask::PropertyUnit))?,
            ("mask", "keep") => {
                let (first, last) = two(None)?;
                Rule::Mask(Mask::Keep { first, last })
            }
            ("generalize", "year") => no_args(Rule::Generalize(Generalize::Year))?,
            ("generalize", "year_month") => no_args(Rule::Generalize(Generalize::YearMonth))?,
            ("generalize", "age_band") => match args.as_slice() {
                [w] if (1..=100).contains(w) => Rule::Generalize(Generalize::AgeBand(*w as u32)),
                _ => {
                    return Err(band_width(s));
                }
            },
            ("fpe", "digits") => no_args(Rule::FpeDigits { kind, domain })?,
            _ => {
                return Err(tr!(
                    "`{s}` is not a field rule; {EXPECTED}",
                    "`{s}` 不是字段规则；{EXPECTED_ZH}"
                ));
            }
        };
        if given.is_some() && !matches!(rule, Rule::Pseudonym { .. } | Rule::FpeDigits { .. }) {
            return Err(tr!(
                "`domain` applies to \"pseudonym\" and \"fpe:digits\" only, not to `{s}`",
                "`domain` 只适用于 \"pseudonym\" 和 \"fpe:digits\"，不适用于 `{s}`"
            ));
        }
        Ok(rule)
    }

    /// Whether the rule delivers the value unchanged.
    pub fn is_plain(&self) -> bool {
        matches!(self, Rule::Plain)
    }

    /// How a key under this rule leaves, for messages: "pseudonymized", "encrypted" or
    /// "as read" (in the current language).
    pub fn key_form(&self) -> &'static str {
        match self {
            Rule::Pseudonym { .. } => exchange_protocol::lang::pick("pseudonymized", "假名化后"),
            Rule::FpeDigits { .. } => {
                exchange_protocol::lang::pick("encrypted (fpe:digits)", "加密（fpe:digits）后")
            }
            _ => exchange_protocol::lang::pick("as read", "原样"),
        }
    }

    /// Whether the rule can be applied to a column of this class (`check --connect` and every
    /// pull refuse other combinations; a value of another type at run time is masked
    /// completely).
    pub fn accepts(&self, class: TypeClass) -> bool {
        use TypeClass::*;
        if class == Unknown {
            return true;
        }
        match self {
            Rule::Plain | Rule::Drop => true,
            Rule::Mask(Mask::Mobile | Mask::BankCard | Mask::Keep { .. }) => {
                matches!(class, Text | Integer | Decimal)
            }
            Rule::Mask(_) => class == Text,
            Rule::Pseudonym { .. } => matches!(class, Text | Integer | Decimal),
            Rule::Generalize(Generalize::Year | Generalize::YearMonth) => {
                matches!(class, Text | Date | Timestamp)
            }
            Rule::Generalize(Generalize::AgeBand(_)) => matches!(class, Text | Integer | Decimal),
            Rule::FpeDigits { .. } => matches!(class, Text | Integer),
        }
    }

    /// What the rule accepts, for messages (in the current language).
    pub fn accepted_types(&self) -> &'static str {
        match self {
            Rule::Plain | Rule::Drop => exchange_protocol::lang::pick("any type", "任何类型"),
            Rule::Mask(Mask::Mobile | Mask::BankCard | Mask::Keep { .. }) => {
                exchange_protocol::lang::pick(
                    "text, integer or decimal columns",
                    "文本、整数或小数列",
                )
            }
            Rule::Mask(_) => exchange_protocol::lang::pick("text columns", "文本列"),
            Rule::Pseudonym { .. } => exchange_protocol::lang::pick(
                "text, integer or decimal columns",
                "文本、整数或小数列",
            ),
            Rule::Generalize(Generalize::Year | Generalize::YearMonth) => {
                exchange_protocol::lang::pick(
                    "date, timestamp or text columns",
                    "日期、时间戳或文本列",
                )
            }
            Rule::Generalize(Generalize::AgeBand(_)) => exchange_protocol::lang::pick(
                "integer, decimal or text columns",
                "整数、小数或文本列",
            ),
            Rule::FpeDigits { .. } => {
                exchange_protocol::lang::pick("text or integer columns", "文本或整数列")
            }
        }
    }
}

/// A coarse class of a source column type, from the type name the source reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TypeClass {
    /// Character types.
    Text,
    /// Integer types.
    Integer,
    /// Exact decimals.
    Decimal,
    /// Floating point.
    Float,
    /// Dates.
    Date,
    /// Timestamps (with or without zone).
    Timestamp,
    /// Booleans.
    Bool,
    /// Binary strings.
    Binary,
    /// JSON documents.
    Json,
    /// Anything else (time of day, intervals, arrays, …).
    Other,
    /// The source does not tell (a SQLite column without a declared type).
    Unknown,
}

impl TypeClass {
    /// The class of a converted value (a rule meeting a value of another class than its
    /// column's masks it completely).
    pub fn of_value(v: &exchange_protocol::value::Value) -> TypeClass {
        use exchange_protocol::value::Value;
        match v {
            Value::Null => TypeClass::Unknown,
            Value::Bool(_) => TypeClass::Bool,
            Value::Int(_) | Value::UInt(_) => TypeClass::Integer,
            Value::Float(_) => TypeClass::Float,
            Value::Decimal(_) => TypeClass::Decimal,
            Value::Text(_) => TypeClass::Text,
            Value::Date(_) => TypeClass::Date,
            Value::Timestamp(_) | Value::TimestampTz(_) => TypeClass::Timestamp,
            Value::Bytes(_) => TypeClass::Binary,
            Value::Json(_) => TypeClass::Json,
        }
    }

    /// Classifies a source type name (`character varying`, `int8`, `DATETIME`, `VARCHAR(20)`, …).
    pub fn of(source_type: &str) -> TypeClass {
        let t = source_type.trim().to_ascii_lowercase();
        let has = |w: &str| t.contains(w);
        if t.is_empty() {
            TypeClass::Unknown
        } else if has("interval") || has("point") || t.ends_with("[]") || t.starts_with('_') {
            TypeClass::Other
        } else if has("json") {
            TypeClass::Json
        } else if has("char") || has("text") || has("clob") || has("string") || has("citext") {
            TypeClass::Text
        } else if has("bool") {
            TypeClass::Bool
        } else if has("int") || has("serial") || t == "year" || t == "bit" {
            TypeClass::Integer
        } else if has("numeric") || has("decimal") {
            TypeClass::Decimal
        } else if has("float") || has("double") || has("real") {
            TypeClass::Float
        } else if has("timestamp") || has("datetime") {
            TypeClass::Timestamp
        } else if t == "date" {
            TypeClass::Date
        } else if has("bytea") || has("blob") || has("binary") {
            TypeClass::Binary
        } else {
            TypeClass::Other
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_documented_rule_parses_and_prints_back() {
        for text in [
            "plain",
            "drop",
            "mask:name",
            "mask:citizen_id",
            "mask:citizen_id(1,2)",
            "mask:mobile",
            "mask:address",
            "mask:bank_card",
            "mask:email",
            "mask:uscc",
            "mask:property_unit",
            "mask:keep(3,4)",
            "generalize:year",
            "generalize:year_month",
            "generalize:age_band(10)",
        ] {
            let rule = Rule::parse(text, IdKind::Other, None).unwrap();
            assert_eq!(rule.to_string(), text);
        }
        assert_eq!(
            Rule::parse("pseudonym", IdKind::CitizenId, None).unwrap(),
            Rule::Pseudonym {
                kind: IdKind::CitizenId,
                domain: "citizen_id".into()
            }
        );
        assert_eq!(
            Rule::parse("fpe:digits", IdKind::Other, Some("hr")).unwrap(),
            Rule::FpeDigits {
                kind: IdKind::Other,
                domain: "hr".into()
            }
        );
        assert_eq!(
            Rule::parse("fpe:digits", IdKind::CitizenId, None).unwrap(),
            Rule::FpeDigits {
                kind: IdKind::CitizenId,
                domain: "citizen_id".into()
            }
        );
    }

    #[test]
    fn unkeyed_hashes_unknown_rules_and_bad_parameters_are_refused() {
        for (text, needle) in [
            ("sha256", "unkeyed hash"),
            ("hash", "unkeyed hash"),
            ("sm3", "unkeyed hash"),
            ("MD5", "unkeyed hash"),
            ("hide", "not a field rule"),
            ("mask:face", "not a field rule"),
            ("mask:keep", "two numbers"),
            ("mask:keep(3)", "two numbers"),
            ("mask:keep(a,b)", "not a whole number"),
            ("mask:citizen_id(9,9)", "nothing would be hidden"),
            ("generalize:age_band(0)", "1 to 100"),
            ("mask:name(1,2)", "no parameters"),
        ] {
            let e = Rule::parse(text, IdKind::Other, None).unwrap_err();
            assert!(e.contains(needle), "{text}: {e}");
        }
        assert!(
            Rule::parse("mask:name", IdKind::Other, Some("x"))
                .unwrap_err()
                .contains("domain")
        );
    }

    #[test]
    fn source_types_are_classified_and_rules_check_them() {
        for (t, class) in [
            ("character varying", TypeClass::Text),
            ("VARCHAR", TypeClass::Text),
            ("bpchar", TypeClass::Text),
            ("int8", TypeClass::Integer),
            ("BIGINT UNSIGNED", TypeClass::Integer),
            ("numeric", TypeClass::Decimal),
            ("DECIMAL", TypeClass::Decimal),
            ("double precision", TypeClass::Float),
            ("date", TypeClass::Date),
            ("DATE", TypeClass::Date),
            ("timestamptz", TypeClass::Timestamp),
            ("DATETIME", TypeClass::Timestamp),
            ("interval", TypeClass::Other),
            ("jsonb", TypeClass::Json),
            ("bytea", TypeClass::Binary),
            ("", TypeClass::Unknown),
        ] {
            assert_eq!(TypeClass::of(t), class, "{t}");
        }
        let name = Rule::parse("mask:name", IdKind::Other, None).unwrap();
        assert!(name.accepts(TypeClass::Text));
        assert!(!name.accepts(TypeClass::Date));
        assert!(name.accepts(TypeClass::Unknown));
        let year = Rule::parse("generalize:year", IdKind::Other, None).unwrap();
        assert!(year.accepts(TypeClass::Date) && !year.accepts(TypeClass::Integer));
    }
}
