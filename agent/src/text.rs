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
    use exchange_protocol::tr;
    match h {
        Unbounded => tr!(
            "not bounded (the first cursor column is not a date or timestamp)",
            "无上界（第一个游标列不是日期或时间戳）"
        ),
        OpenTransaction { since, .. } => tr!(
            "held back by a transaction open on the source since {since}",
            "被数据源上自 {since} 起未结束的事务阻挡"
        ),
        PreparedTransaction { since } => tr!(
            "held back by a prepared transaction on the source since {since}",
            "被数据源上自 {since} 起的已预备事务阻挡"
        ),
        Replica { lag } => {
            let lag = lag.as_secs();
            tr!(
                "the source is a replica: source clock minus replica_lag ({lag} s)",
                "数据源为副本：数据源时钟减去 replica_lag（{lag} 秒）"
            )
        }
        Clock => tr!(
            "source clock minus the safety lag (no transaction open)",
            "数据源时钟减去安全延迟（无未结束的事务）"
        ),
        LagOnly => tr!(
            "source clock minus the safety lag (open transactions are not visible)",
            "数据源时钟减去安全延迟（看不到未结束的事务）"
        ),
    }
}
