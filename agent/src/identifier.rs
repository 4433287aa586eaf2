//! Identifiers of the domain: 公民身份号码 (GB 11643-1999) and 统一社会信用代码 (GB 32100-2015).
//!
//! Normalization comes before any comparison (upper-case `X`, spaces stripped, 15-digit
//! numbers converted to 18), so that joins across departments do not miss.

const ID_WEIGHTS: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
const ID_CHECK: &[u8; 11] = b"10X98765432";
const USCC_CHARSET: &str = "0123456789ABCDEFGHJKLMNPQRTUWXY";
const USCC_WEIGHTS: [u32; 17] = [
    1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28,
];

/// The check character of a citizen ID from its first 17 digits (ISO 7064 MOD 11-2).
pub fn citizen_id_check(first17: &str) -> Option<char> {
    let digits: Vec<u32> = first17
        .chars()
        .map(|c| c.to_digit(10))
        .collect::<Option<_>>()?;
    if digits.len() != 17 {
        return None;
    }
    let s: u32 = digits.iter().zip(ID_WEIGHTS).map(|(d, w)| d * w).sum();
    Some(ID_CHECK[(s % 11) as usize] as char)
}

/// Normalizes a citizen ID: strips spaces, upper-cases `x`, converts 15 digits to 18.
/// Returns `None` when the result is not a valid 18-character number.
pub fn normalize_citizen_id(raw: &str) -> Option<String> {
    let s: String = raw
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_uppercase();
    let s = if s.len() == 15 && s.chars().all(|c| c.is_ascii_digit()) {
        let first17 = format!("{}19{}", &s[..6], &s[6..]);
        let check = citizen_id_check(&first17)?;
        format!("{first17}{check}")
    } else {
        s
    };
    if s.len() != 18 {
        return None;
    }
    let check = citizen_id_check(&s[..17])?;
    (s.ends_with(check)).then_some(s)
}

/// Whether `code` is a valid 统一社会信用代码 (charset and check character).
pub fn is_valid_uscc(code: &str) -> bool {
    let values: Option<Vec<u32>> = code
        .chars()
        .map(|c| USCC_CHARSET.find(c).map(|i| i as u32))
        .collect();
    let Some(values) = values else { return false };
    if values.len() != 18 {
        return false;
    }
    let s: u32 = values[..17]
        .iter()
        .zip(USCC_WEIGHTS)
        .map(|(v, w)| v * w)
        .sum();
    let c = (31 - s % 31) % 31;
    values[17] == c
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
