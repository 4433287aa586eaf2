//! What the rules need from `[policy]`, read at configuration time: the key material and the
//! time zone.

use exchange_rules::fpe::FpeKey;
use exchange_rules::pseudonym::PseudonymKey;
use exchange_rules::rule::{self, Rule};
use exchange_rules::{generalize, seal};

/// The key material and time zone of `[policy]`.
#[derive(Debug, Clone)]
pub struct Keys {
    /// `pseudonym_key_file` with `pseudonym_key_version`.
    pub pseudonym: Option<PseudonymKey>,
    /// `fpe_key_file`.
    pub fpe: Option<FpeKey>,
    /// `seal_key_file`: the node's own key for sealing the stored positions of keys that do
    /// not leave as read ([`seal`]).
    pub seal: Option<seal::SealKey>,
    /// `time_zone`: the zone in which an instant's date is generalized (default `+08:00`).
    pub time_zone: chrono::FixedOffset,
}

impl Default for Keys {
    fn default() -> Keys {
        Keys {
            pseudonym: None,
            fpe: None,
            seal: None,
            time_zone: generalize::china(),
        }
    }
}

impl Keys {
    /// What identifies the key a rule uses, for the stream fingerprint: version and check
    /// value, never the secret. Empty for rules without a key.
    pub fn describe(&self, rule: &Rule) -> String {
        match rule {
            Rule::Pseudonym { .. } => match &self.pseudonym {
                Some(k) => format!(" key v{} check {}", k.version(), k.check_value()),
                None => " key missing".into(),
            },
            Rule::FpeDigits { .. } => match &self.fpe {
                Some(k) => format!(" key check {}", k.check_value()),
                None => " key missing".into(),
            },
            // A year or month of an instant depends on the zone; the default is left out so
            // that streams begun before the setting existed keep their shape.
            Rule::Generalize(rule::Generalize::Year | rule::Generalize::YearMonth)
                if self.time_zone != generalize::china() =>
            {
                format!(" time_zone {}", self.time_zone)
            }
            _ => String::new(),
        }
    }
}
