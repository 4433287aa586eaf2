//! `[policy]`: the key material of the desensitization rules (pseudonym, FPE and seal keys,
//! each read from a file outside `data_dir` readable by its owner only) and the time zone.

use std::path::Path;

use super::{ConfigError, Keys, Validator, is_inside, raw};
use exchange_protocol::tr;
use exchange_rules::fpe::FpeKey;
use exchange_rules::pseudonym::PseudonymKey;

impl Validator<'_> {
    /// The text of a key file: outside `data_dir`, readable by its owner only.
    pub(super) fn secret_file(
        &self,
        key: &str,
        f: &str,
        data_dir: &Path,
    ) -> Result<String, ConfigError> {
        let path = self.existing_file(key, f)?;
        if is_inside(&path, data_dir) {
            return Err(self.err(
                key,
                tr!(
                    "{} is inside data_dir ({}): keys live outside it (e.g. in /etc/exchange-agent/keys), so that a copy of data_dir alone opens nothing",
                    "{} 位于 data_dir（{}）之内：密钥必须放在它之外（例如 /etc/exchange-agent/keys），这样仅复制 data_dir 解不开任何数据",
                    path.display(),
                    data_dir.display()
                ),
            ));
        }
        exchange_protocol::tls::check_secret_permissions(&path).map_err(|e| self.err(key, e))?;
        std::fs::read_to_string(&path).map_err(|e| {
            self.err(
                key,
                tr!(
                    "cannot read {}: {}",
                    "无法读取 {}：{}",
                    path.display(),
                    exchange_protocol::translate::io(&e)
                ),
            )
        })
    }

    pub(super) fn keys(&self, p: &raw::RawPolicy, data_dir: &Path) -> Result<Keys, ConfigError> {
        let read = |key: &str, f: &str| self.secret_file(key, f, data_dir);
        // The secrets of the other keys, which the seal key must not repeat.
        let mut others: Vec<Vec<u8>> = Vec::new();
        let pseudonym = match &p.pseudonym_key_file {
            Some(f) => {
                let text = read("policy.pseudonym_key_file", f)?;
                others.extend(hex::decode(text.trim()));
                Some(
                    PseudonymKey::from_hex(p.pseudonym_key_version.unwrap_or(1), &text).map_err(
                        |e| match e {
                            exchange_rules::pseudonym::KeyError::Version => {
                                self.err("policy.pseudonym_key_version", e)
                            }
                            e => self.err("policy.pseudonym_key_file", e),
                        },
                    )?,
                )
            }
            None if p.pseudonym_key_version.is_some() => {
                return Err(self.err(
                    "policy.pseudonym_key_version",
                    tr!(
                        "a key version without `pseudonym_key_file`",
                        "设置了密钥版本，却没有设置 `pseudonym_key_file`"
                    ),
                ));
            }
            None => None,
        };
        let fpe = match &p.fpe_key_file {
            Some(f) => {
                let text = read("policy.fpe_key_file", f)?;
                others.extend(hex::decode(text.trim()));
                Some(FpeKey::from_hex(&text).map_err(|e| self.err("policy.fpe_key_file", e))?)
            }
            None => None,
        };
        let seal = match &p.seal_key_file {
            Some(f) => {
                let text = read("policy.seal_key_file", f)?;
                if hex::decode(text.trim()).is_ok_and(|s| others.contains(&s)) {
                    return Err(self.err(
                        "policy.seal_key_file",
                        tr!(
                            "the seal key must be a key of its own, not the pseudonym or FPE key (the pseudonym key is shared with other departments): `openssl rand -hex 32` makes one",
                            "封存密钥必须单独生成，不能与假名密钥或 FPE 密钥相同（假名密钥是与其他部门共享的）：可用 `openssl rand -hex 32` 生成"
                        ),
                    ));
                }
                Some(
                    exchange_rules::seal::SealKey::from_hex(&text)
                        .map_err(|e| self.err("policy.seal_key_file", e))?,
                )
            }
            None => None,
        };
        let time_zone = match &p.time_zone {
            Some(z) => exchange_rules::generalize::parse_time_zone(z)
                .map_err(|e| self.err("policy.time_zone", e))?,
            None => exchange_rules::generalize::china(),
        };
        Ok(Keys {
            pseudonym,
            fpe,
            seal,
            time_zone,
        })
    }
}
