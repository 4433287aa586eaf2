//! `locator`: the columns whose values a quarantine entry records so the department can find
//! the row at its source (`id=123, updated_at=2026-12-01T10:00:00`). The entry stays on this
//! machine, but its values are kept in clear, so a locator column is one whose values the
//! policy lets leave in clear anyway, or a cursor column (whose values the stored position
//! keeps in clear): never a dropped or desensitized field, never the key when the key leaves
//! pseudonymized or encrypted; and one already read from the source (a field or a cursor
//! column: only configured columns are read).

use std::collections::HashSet;

use exchange_protocol::tr;
use exchange_rules::rule::Rule;

use super::{ConfigError, Mode, Validator};

impl Validator<'_> {
    /// The locator columns of a resource: as written (each checked), or by default its
    /// configured cursor columns other than the key (the key is recorded on the entry
    /// already, as it leaves). `locator = []` records none.
    pub(super) fn row_locator(
        &self,
        key: &str,
        code: &str,
        written: Option<Vec<String>>,
        fields: &[(String, Rule)],
        resource_key: &str,
        mode: &Mode,
    ) -> Result<Vec<String>, ConfigError> {
        let cursor: &[String] = match mode {
            Mode::Incremental { cursor, .. } => cursor,
            Mode::Snapshot => &[],
        };
        let Some(written) = written else {
            return Ok(cursor
                .iter()
                .filter(|c| !c.eq_ignore_ascii_case(resource_key))
                .cloned()
                .collect());
        };
        let mut seen = HashSet::new();
        for column in &written {
            if !seen.insert(column.to_lowercase()) {
                return Err(self.err(key, tr!(
                    "resource `{code}`: locator column `{column}` is listed twice (column names are compared without case)",
                    "资源 `{code}`：locator 列 `{column}` 重复列出（列名不区分大小写）"
                )));
            }
            let rule = fields
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(column))
                .map(|(_, r)| r);
            let in_cursor = cursor.iter().any(|c| c.eq_ignore_ascii_case(column));
            self.locator_column(key, code, column, rule, in_cursor, resource_key)?;
        }
        Ok(written)
    }

    /// One written locator column: read from the source, and kept in clear by the policy.
    fn locator_column(
        &self,
        key: &str,
        code: &str,
        column: &str,
        rule: Option<&Rule>,
        in_cursor: bool,
        resource_key: &str,
    ) -> Result<(), ConfigError> {
        match rule {
            None if in_cursor => Ok(()),
            None => Err(self.err(key, tr!(
                "resource `{code}`: locator column `{column}` is neither a field of [resources.fields] nor a cursor column; only configured columns are read from the source, so list it in [resources.fields] (\"plain\") or choose another",
                "资源 `{code}`：locator 列 `{column}` 既不是 [resources.fields] 中的字段，也不是游标列；只有配置的列才会从源库读取，请在 [resources.fields] 中列出它（\"plain\"）或换一列"
            ))),
            Some(Rule::Drop) => Err(self.err(key, tr!(
                "resource `{code}`: locator column `{column}` is dropped in [resources.fields]; a locator is kept in clear in quarantine entries, so it must be a plain field or a cursor column",
                "资源 `{code}`：locator 列 `{column}` 在 [resources.fields] 中为 drop；隔离记录以明文保存定位值，因此它必须是 plain 字段或游标列"
            ))),
            Some(rule) if column.eq_ignore_ascii_case(resource_key) && !rule.is_plain() => {
                let form = rule.key_form();
                Err(self.err(key, tr!(
                    "resource `{code}`: locator column `{column}` is the key, which leaves {form}; a locator is kept in clear, so it would keep the raw key: choose a column that is not an identifier (find a row by its key with `exchange-agent quarantine find {code} --key …`)",
                    "资源 `{code}`：locator 列 `{column}` 是主键，主键以 {form} 形式离开；定位值以明文保存，会保留原始主键：请选择非标识列（按主键查找隔离行请用 `exchange-agent quarantine find {code} --key …`）"
                )))
            }
            Some(rule) if !rule.is_plain() => Err(self.err(key, tr!(
                "resource `{code}`: locator column `{column}` is desensitized ({rule}) in [resources.fields]; a locator is kept in clear in quarantine entries, so it must be a plain field or a cursor column",
                "资源 `{code}`：locator 列 `{column}` 在 [resources.fields] 中已脱敏（{rule}）；隔离记录以明文保存定位值，因此它必须是 plain 字段或游标列"
            ))),
            Some(_) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::Fixture;

    /// A resource with a pseudonymized key, a plain `id`, a masked `name` and a dropped
    /// `note`, in `mode` (with its cursor line), and `locator` (a TOML line, or empty).
    fn config(f: &Fixture, mode: &str, locator: &str) -> String {
        let key = |name: &str, hex: &str| {
            use std::os::unix::fs::PermissionsExt;
            let p = f.dir.path().join(name);
            std::fs::write(&p, hex.repeat(32)).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        };
        key("pseudonym.key", "ab");
        key("seal.key", "ef");
        format!(
            r#"[node]
id = "rsj-node-01"
department = "11330100MB0123456W"
data_dir = "data"

[hub]
url = "https://hub.example:8443"
ca = "tls/ca.pem"
cert = "tls/node.pem"
key = "tls/node.key"

[policy]
pseudonym_key_file = "pseudonym.key"
seal_key_file = "seal.key"

[[sources]]
name = "hr"
kind = "sqlite"
url = "sqlite://business.db"

[[resources]]
code = "330100-RSJ-0001"
name = "社保参保人员"
share = "unconditional"
source = "hr"
table = "insured_person"
key = "id_card"
{mode}
{locator}

[resources.fields]
id_card = {{ rule = "pseudonym", identifier = "citizen_id" }}
id = "plain"
name = "mask:name"
note = "drop"
"#
        )
    }

    const INCREMENTAL: &str = "mode = \"incremental\"\ncursor = [\"updated_at\", \"id_card\"]";
    const SNAPSHOT: &str = "mode = \"snapshot\"";

    #[test]
    fn the_default_locator_is_the_cursor_without_the_key() {
        let f = Fixture::new();
        let c = f.parse(&config(&f, INCREMENTAL, "")).unwrap();
        assert_eq!(c.resources[0].locator, ["updated_at"]);
        let c = f.parse(&config(&f, SNAPSHOT, "")).unwrap();
        assert!(c.resources[0].locator.is_empty());
    }

    #[test]
    fn plain_fields_and_cursor_columns_may_locate_a_row() {
        let f = Fixture::new();
        let c = f
            .parse(&config(
                &f,
                INCREMENTAL,
                "locator = [\"id\", \"updated_at\"]",
            ))
            .unwrap();
        assert_eq!(c.resources[0].locator, ["id", "updated_at"]);
        let c = f.parse(&config(&f, SNAPSHOT, "locator = []")).unwrap();
        assert!(c.resources[0].locator.is_empty());
    }

    #[test]
    fn a_locator_that_would_keep_a_hidden_or_unread_value_is_refused_naming_the_key() {
        let f = Fixture::new();
        for (locator, needle) in [
            (
                "[\"name\"]",
                "locator column `name` is desensitized (mask:name)",
            ),
            ("[\"note\"]", "locator column `note` is dropped"),
            (
                "[\"id_card\"]",
                "locator column `id_card` is the key, which leaves pseudonymized",
            ),
            (
                "[\"phone\"]",
                "locator column `phone` is neither a field of [resources.fields] nor a cursor column",
            ),
            ("[\"id\", \"ID\"]", "locator column `ID` is listed twice"),
        ] {
            let text = config(&f, SNAPSHOT, &format!("locator = {locator}"));
            let e = f.parse(&text).unwrap_err().to_string();
            assert!(e.contains(needle), "{locator}: expected `{needle}` in {e}");
            assert!(
                e.contains("key `resources[0].locator`"),
                "{locator}: the key is named: {e}"
            );
            let line = text.lines().position(|l| l.starts_with("locator")).unwrap() + 1;
            assert!(
                e.contains(&format!("agent.toml:{line}:")),
                "{locator}: the line is named: {e}"
            );
        }
    }
}
