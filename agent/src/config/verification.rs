//! A resource's verification settings: `[resources.compare]`, `[[resources.grants]]`,
//! `reveal_not_found` and `enumerable`, each naming fields that are read and are not the key.

use chrono::{DateTime, NaiveDate, Utc};

use super::verify::{Grant, RawGrant, RawVerification, Verification};
use super::{ConfigError, Validator};
use exchange_protocol::tr;
use exchange_rules::compare::Compare;
use exchange_rules::rule::Rule;

/// The resource whose verification settings are validated: what a named field is checked
/// against.
struct Claimable<'a> {
    /// Its index in `[[resources]]`, for the keys in messages.
    i: usize,
    /// Its code.
    code: &'a str,
    /// Its fields with their rules.
    fields: &'a [(String, Rule)],
    /// Its key column (the subject, never a claim).
    key: &'a str,
}

impl Validator<'_> {
    /// A resource's `[resources.compare]`, `[[resources.grants]]`, `reveal_not_found` and
    /// `enumerable`; `key` is the resource's key column (the subject, never a claim).
    pub(super) fn verification(
        &self,
        i: usize,
        code: &str,
        fields: &[(String, Rule)],
        key: &str,
        raw: RawVerification,
    ) -> Result<Verification, ConfigError> {
        let RawVerification {
            compare,
            grants,
            reveal_not_found,
            enumerable,
        } = raw;
        let res = Claimable {
            i,
            code,
            fields,
            key,
        };
        let mut out = Verification {
            reveal_not_found: reveal_not_found.unwrap_or(false),
            ..Verification::default()
        };
        for (e, name) in enumerable.unwrap_or_default().iter().enumerate() {
            let field = self.claimable(&res, &format!("resources[{i}].enumerable[{e}]"), name)?;
            if !out.enumerable.contains(&field) {
                out.enumerable.push(field);
            }
        }
        for (name, how) in compare.unwrap_or_default() {
            let at = format!("resources[{i}].compare.{name}");
            let field = self.claimable(&res, &at, &name)?;
            let how = Compare::parse(&how).map_err(|e| {
                self.err(
                    &at,
                    tr!(
                        "resource `{code}`, field `{name}`: {e}",
                        "资源 `{code}` 的字段 `{name}`：{e}"
                    ),
                )
            })?;
            out.compare.insert(field, how);
        }
        for (g, raw) in grants.into_iter().enumerate() {
            let grant = self.grant(&res, g, raw, &out)?;
            out.grants.push(grant);
        }
        Ok(out)
    }

    /// The configured name of field `name`, which may be claimed: listed, read (not
    /// dropped) and not the key.
    fn claimable(&self, res: &Claimable, at: &str, name: &str) -> Result<String, ConfigError> {
        let code = res.code;
        match res.fields.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)) {
            Some((n, Rule::Drop)) => Err(self.err(
                at,
                tr!("resource `{code}`: field `{n}` is dropped (never read), so it cannot be verified", "资源 `{code}`：字段 `{n}` 设为丢弃（从不读取），因此无法核验"),
            )),
            Some((n, _)) if n.eq_ignore_ascii_case(res.key) => Err(self.err(
                at,
                tr!("resource `{code}`: field `{n}` is the key, the subject a requester asks about; it is never a claim (a claim on it would only tell whether the subject is known)", "资源 `{code}`：字段 `{n}` 是键列，即请求方所询问的主体，不能作为待核验的声称值（核验它只会透露库中是否有此主体）"),
            )),
            Some((n, _)) => Ok(n.clone()),
            None => Err(self.err(
                at,
                tr!(
                    "resource `{code}`: `{name}` is not a field of [resources.fields]",
                    "资源 `{code}`：`{name}` 不是 [resources.fields] 中的字段"
                ),
            )),
        }
    }

    /// Grant `g` of the resource; `so_far` holds its `enumerable` fields.
    fn grant(
        &self,
        res: &Claimable,
        g: usize,
        raw: RawGrant,
        so_far: &Verification,
    ) -> Result<Grant, ConfigError> {
        let (i, code) = (res.i, res.code);
        let at = |k: &str| format!("resources[{i}].grants[{g}].{k}");
        if raw.requester.trim().is_empty() {
            return Err(self.err(&at("requester"), tr!("must not be empty", "不能为空")));
        }
        if raw.fields.is_empty() {
            return Err(self.err(
                &at("fields"),
                tr!("grant at least one field", "至少授权一个字段"),
            ));
        }
        let mut granted = Vec::new();
        for f in &raw.fields {
            granted.push(self.claimable(res, &at("fields"), f)?);
        }
        if let Some(p) = &raw.purposes
            && (p.is_empty() || p.iter().any(|p| p.trim().is_empty()))
        {
            return Err(self.err(
                &at("purposes"),
                tr!(
                    "list at least one non-empty purpose, or leave `purposes` out to allow any",
                    "至少列出一个非空的用途；如不限用途，请删除 `purposes`"
                ),
            ));
        }
        let expires = match &raw.expires {
            Some(e) => Some(parse_expiry(e).ok_or_else(|| {
                self.err(
                    &at("expires"),
                    tr!("`{e}` is not a date or time; expected \"2025-12-31\" (the grant holds through that day, UTC+8) or RFC 3339 \"2025-12-31T18:00:00+08:00\"", "`{e}` 不是日期或时间；应为 \"2025-12-31\"（授权有效至当天结束，北京时间）或 RFC 3339 格式的 \"2025-12-31T18:00:00+08:00\""),
                )
            })?),
            None => None,
        };
        let psi = raw.psi.unwrap_or(false);
        let psi_enumerable = raw.psi_enumerable.unwrap_or(false);
        if psi_enumerable && !psi {
            return Err(self.err(
                &at("psi_enumerable"),
                tr!("resource `{code}`: psi_enumerable without psi = true; private set intersection is allowed by `psi` first", "资源 `{code}`：设置了 psi_enumerable，却没有 psi = true；须先用 `psi` 允许隐私集合求交"),
            ));
        }
        if psi_enumerable && !granted.iter().any(|f| so_far.is_enumerable(f)) {
            return Err(self.err(
                &at("psi_enumerable"),
                tr!("resource `{code}`: the grant names no field listed in `enumerable`, so psi_enumerable has nothing to allow", "资源 `{code}`：该授权的字段都不在 `enumerable` 中，psi_enumerable 没有可放开的字段"),
            ));
        }
        Ok(Grant {
            requester: raw.requester.trim().to_owned(),
            fields: granted,
            purposes: raw.purposes,
            expires,
            psi,
            psi_enumerable,
        })
    }
}

/// `2025-12-31` (through the end of that day in China Standard Time) or RFC 3339.
fn parse_expiry(s: &str) -> Option<DateTime<Utc>> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    let day = NaiveDate::parse_from_str(s, "%Y-%m-%d").ok()?;
    let next = day.succ_opt()?.and_hms_opt(0, 0, 0)?;
    next.and_local_timezone(exchange_rules::generalize::china())
        .single()
        .map(|t| t.with_timezone(&Utc))
}
