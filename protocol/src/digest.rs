//! SM3 (GB/T 32905-2016), the one digest of the workspace: batch bodies, audit chain lines,
//! configuration fingerprints and queue digests all use these two functions.

use sm3::{Digest, Sm3};

/// SM3 of `data`.
pub fn sm3(data: &[u8]) -> [u8; 32] {
    Sm3::digest(data).into()
}

/// SM3 of `data`, lower-case hex.
pub fn sm3_hex(data: &[u8]) -> String {
    hex::encode(sm3(data))
}

#[cfg(test)]
mod tests {
    #[test]
    fn sm3_of_abc_is_the_standards_example() {
        // GB/T 32905-2016, appendix A.1.
        assert_eq!(
            super::sm3_hex(b"abc"),
            "66c7f0f462eeedd9d1f2d46bdc10e4e24167c4875cf2f7a2297da02b8f4ba8e0"
        );
    }
}
