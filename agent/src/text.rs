//! How durations and source horizons read to people, in `status`, `sync`, `check`, log lines
//! and refusals.

/// A duration for people: `2s`, `5m`, `1h 30m`, `1d 2h`.
pub fn duration_text(d: std::time::Duration) -> String {
    let s = d.as_secs();
    match s {
        0 if d.as_millis() > 0 => format!("{}ms", d.as_millis()),
        0..60 => format!("{s}s"),
        60..3600 if s.is_multiple_of(60) => format!("{}m", s / 60),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        3600..86400 if s.is_multiple_of(3600) => format!("{}h", s / 3600),
        3600..86400 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        _ if s.is_multiple_of(86400) => format!("{}d", s / 86400),
        _ => format!("{}d {}h", s / 86400, s % 86400 / 3600),
    }
}

/// How the last page was bounded, for people.
pub fn horizon_text(h: &exchange_connectors::HorizonInfo) -> String {
    use exchange_connectors::HorizonInfo::*;
    match h {
        Unbounded => "not bounded (the first cursor column is not a date or timestamp)".into(),
        OpenTransaction { since, .. } => {
            format!("held back by a transaction open on the source since {since}")
        }
        PreparedTransaction { since } => {
            format!("held back by a prepared transaction on the source since {since}")
        }
        Replica { lag } => format!(
            "the source is a replica: source clock minus replica_lag ({} s)",
            lag.as_secs()
        ),
        Clock => "source clock minus the safety lag (no transaction open)".into(),
        LagOnly => "source clock minus the safety lag (open transactions are not visible)".into(),
    }
}
