//! A resource's verification settings: `[resources.compare]`, `[[resources.grants]]`,
//! `reveal_not_found` and `enumerable`, each naming fields that are read and are not the key.

use chrono::{DateTime, NaiveDate, Utc};

use super::verify::{Grant, RawGrant, RawVerification, Verification};
use super::{ConfigError, Validator};
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
            let how = Compare::parse(&how)
                .map_err(|e| self.err(&at, format!("resource `{code}`, field `{name}`: {e}")))?;
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
                format!("resource `{code}`: field `{n}` is dropped (never read), so it cannot be verified"),
            )),
            Some((n, _)) if n.eq_ignore_ascii_case(res.key) => Err(self.err(
                at,
                format!("resource `{code}`: field `{n}` is the key, the subject a requester asks about; it is never a claim (a claim on it would only tell whether the subject is known)"),
            )),
            Some((n, _)) => Ok(n.clone()),
            None => Err(self.err(
                at,
                format!("resource `{code}`: `{name}` is not a field of [resources.fields]"),
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
            return Err(self.err(&at("requester"), "must not be empty"));
        }
        if raw.fields.is_empty() {
            return Err(self.err(&at("fields"), "grant at least one field"));
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
                "list at least one non-empty purpose, or leave `purposes` out to allow any",
            ));
        }
        let expires = match &raw.expires {
            Some(e) => Some(parse_expiry(e).ok_or_else(|| {
                self.err(
                    &at("expires"),
                    format!("`{e}` is not a date or time; expected \"2025-12-31\" (the grant holds through that day, UTC+8) or RFC 3339 \"2025-12-31T18:00:00+08:00\""),
                )
            })?),
            None => None,
        };
        let psi = raw.psi.unwrap_or(false);
        let psi_enumerable = raw.psi_enumerable.unwrap_or(false);
        if psi_enumerable && !psi {
            return Err(self.err(
                &at("psi_enumerable"),
                format!("resource `{code}`: psi_enumerable without psi = true; private set intersection is allowed by `psi` first"),
            ));
        }
        if psi_enumerable && !granted.iter().any(|f| so_far.is_enumerable(f)) {
            return Err(self.err(
                &at("psi_enumerable"),
                format!("resource `{code}`: the grant names no field listed in `enumerable`, so psi_enumerable has nothing to allow"),
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
