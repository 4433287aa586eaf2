//! What a resource's rules need from `[policy]` and `[verify]`: the pseudonym or FPE key of
//! its rules, the seal key for a key that does not leave as read, the comparison key for an
//! `hmac` comparison.

use std::path::{Path, PathBuf};

use super::verify::Verify;
use super::{ConfigError, Keys, Resource, Validator, raw};
use exchange_protocol::tr;
use exchange_rules::rule::Rule;

impl Validator<'_> {
    /// Every pseudonym and fpe:digits rule has its key in `[policy]`.
    pub(super) fn rule_keys(
        &self,
        i: usize,
        res: &Resource,
        keys: &Keys,
    ) -> Result<(), ConfigError> {
        for (name, rule) in &res.fields {
            let (missing, what) = match rule {
                Rule::Pseudonym { .. } if keys.pseudonym.is_none() => {
                    (true, "policy.pseudonym_key_file")
                }
                Rule::FpeDigits { .. } if keys.fpe.is_none() => (true, "policy.fpe_key_file"),
                _ => (false, ""),
            };
            if missing {
                return Err(self.err(
                    &format!("resources[{i}].fields.{name}"),
                    tr!(
                        "resource `{}`, field `{name}`: rule {rule} needs a key: set `{what}` in [policy]",
                        "资源 `{}` 的字段 `{name}`：规则 {rule} 需要密钥，请在 [policy] 中设置 `{what}`",
                        res.code
                    ),
                ));
            }
        }
        Ok(())
    }

    /// A delivered resource whose key does not leave as read keeps the raw key only sealed,
    /// so it needs `seal_key_file`; the message says how to make one, next to the other keys.
    pub(super) fn seal_key(
        &self,
        i: usize,
        res: &Resource,
        keys: &Keys,
        key_files: &raw::RawPolicy,
    ) -> Result<(), ConfigError> {
        // A file drop resource stores no source position (its progress is a file's name,
        // digest and row count).
        if !res.share.delivers() || keys.seal.is_some() || res.files.is_some() {
            return Ok(());
        }
        let hidden = res
            .fields
            .iter()
            .find(|(n, rule)| n.eq_ignore_ascii_case(&res.key) && !rule.is_plain());
        let Some((name, rule)) = hidden else {
            return Ok(());
        };
        let dir = [&key_files.pseudonym_key_file, &key_files.fpe_key_file]
            .into_iter()
            .flatten()
            .filter_map(|f| self.path(f).parent().map(Path::to_path_buf))
            .next()
            .unwrap_or_else(|| PathBuf::from("/etc/exchange-agent/keys"));
        let file = dir.join("seal.key");
        Err(self.err(
            &format!("resources[{i}].fields.{name}"),
            tr!(
                "resource `{}`: its key `{name}` leaves {}, so its raw value is kept only sealed in the stored source position, under this node's own seal key: set `seal_key_file` in [policy]. Create the file once, outside data_dir, and never share it: `openssl rand -hex 32 > {f} && chmod 600 {f} && chown exchange-agent {f}`",
                "资源 `{}`：键列 `{name}` {}推送，因此它的原始值只能用本节点自己的封存密钥封存后，保存在已存储的读取位置中：请在 [policy] 中设置 `seal_key_file`。在 data_dir 之外创建一次该文件，且绝不与他人共享：`openssl rand -hex 32 > {f} && chmod 600 {f} && chown exchange-agent {f}`",
                res.code,
                rule.key_form(),
                f = file.display()
            ),
        ))
    }

    /// An `hmac` comparison needs `[verify] comparison_key_file`.
    pub(super) fn comparison_key(
        &self,
        i: usize,
        res: &Resource,
        verify: Option<&Verify>,
    ) -> Result<(), ConfigError> {
        if let Some(v) = verify
            && v.comparison_key.is_none()
            && let Some((field, _)) = res
                .verification
                .compare
                .iter()
                .find(|(_, c)| **c == exchange_rules::compare::Compare::Hmac)
        {
            return Err(self.err(
                &format!("resources[{i}].compare.{field}"),
                tr!("resource `{}`, field `{field}`: \"hmac\" needs the comparison key shared with the requesters: set `comparison_key_file` in [verify]", "资源 `{}` 的字段 `{field}`：\"hmac\" 比对需要与请求方共享的比对密钥，请在 [verify] 中设置 `comparison_key_file`", res.code),
            ));
        }
        Ok(())
    }
}
