//! `exchange-agent check`: validate the configuration and, with `--connect`, reach every
//! source and the hub. Exit 0 valid, 2 configuration error, 3 a database or the hub
//! unreachable.

use std::fmt::Write as _;

use exchange_connectors::{ConnectorError, SourceSpec};
use exchange_protocol::tr;

use crate::config::{Config, Mode, Resource, Share};
use crate::identifier::IdKind;
use crate::pipeline::push::{HubClient, PushError};
use crate::policy::{Plan, Rule};

/// The verdict of `check`.
#[derive(Debug)]
pub enum Verdict {
    /// Everything checked is fine (warnings may be present).
    Ok,
    /// The configuration is wrong.
    Config,
    /// A source or the hub is unreachable.
    Unreachable,
}

impl Verdict {
    /// The worse of two verdicts: a configuration error outweighs an unreachable source,
    /// which outweighs nothing wrong.
    fn worst(self, other: Verdict) -> Verdict {
        match (self, other) {
            (Verdict::Config, _) | (_, Verdict::Config) => Verdict::Config,
            (Verdict::Unreachable, _) | (_, Verdict::Unreachable) => Verdict::Unreachable,
            _ => Verdict::Ok,
        }
    }

    /// What a connector's error says: unreachable, or (anything else) the configuration.
    fn of_connector(e: &ConnectorError) -> Verdict {
        match e {
            ConnectorError::Unreachable { .. } => Verdict::Unreachable,
            _ => Verdict::Config,
        }
    }

    /// The process exit code.
    pub fn exit_code(&self) -> i32 {
        match self {
            Verdict::Ok => 0,
            Verdict::Config => 2,
            Verdict::Unreachable => 3,
        }
    }
}

/// Warnings about rules that are valid but probably not what was meant: a pseudonym of
/// identifier kind `other` is computed over the value as written (not normalized), so its
/// tokens do not join with those of an identifier's kind in other resources or departments;
/// and verification grants that tell more than the budgets suggest ([`verification_warnings`]).
pub fn rule_warnings(r: &Resource) -> Vec<String> {
    let mut out: Vec<String> = r
        .fields
        .iter()
        .filter_map(|(name, rule)| match rule {
            Rule::Pseudonym {
                kind: IdKind::Other,
                domain,
            } => Some(exchange_protocol::tr!(
                "resource {}: {} `{name}` is pseudonymized as identifier kind `other` (domain `{domain}`): its value is not normalized, and its tokens will not join with the tokens of 公民身份号码, 统一社会信用代码 … of other resources and departments; if it holds one, name the kind: `{name} = {{ rule = \"pseudonym\", identifier = \"citizen_id\" }}`",
                "资源 {}：{} `{name}` 以标识类型 `other` 假名化（域 `{domain}`）：其值不做规范化，它的假名无法与其他资源和部门的公民身份号码、统一社会信用代码……的假名关联；如果它存放的是其中一种，请写明类型：`{name} = {{ rule = \"pseudonym\", identifier = \"citizen_id\" }}`",
                r.code,
                if name.eq_ignore_ascii_case(&r.key) {
                    exchange_protocol::lang::pick("key", "主键")
                } else {
                    exchange_protocol::lang::pick("field", "字段")
                }
            )),
            _ => None,
        })
        .collect();
    out.extend(verification_warnings(r));
    out
}

/// Whether a field's name says it holds what a 公民身份号码 holds: the birth date or the sex
/// (`birth…`, `dob`, `csrq` 出生日期, `出生…`, `sex`, `gender`, `xb` 性别, `性别`).
fn in_citizen_id(field: &str) -> bool {
    let f = field.to_lowercase();
    ["dob", "csrq", "xb"].contains(&f.as_str())
        || ["birth", "出生", "sex", "gender", "性别"]
            .iter()
            .any(|n| f.contains(n))
}

/// Grants of the verification service that tell more than the budgets suggest
/// (docs/PROTOCOL.md §11.7): a birth date or sex claimed on a resource keyed by 公民身份号码
/// that hides membership (both are in the subject, so one claim tells whether it is held), and
/// a field the requester also receives generalized, or masked so that few candidates are left
/// (`mask:mobile`: 10,000; `mask:citizen_id`: the birth date), not listed as `enumerable`.
pub fn verification_warnings(r: &Resource) -> Vec<String> {
    let v = &r.verification;
    let mut granted: Vec<&String> = v.grants.iter().flat_map(|g| &g.fields).collect();
    granted.sort_unstable();
    granted.dedup();
    let delivered = matches!(
        r.share,
        Share::Unconditional | Share::Conditional { deliver: true }
    );
    let mut out = Vec::new();
    for field in granted {
        if r.key_kind == IdKind::CitizenId && !v.reveal_not_found && in_citizen_id(field) {
            out.push(exchange_protocol::tr!(
                "resource {}: field `{field}` is granted for verification on a resource keyed by 公民身份号码 that hides whether a subject is held (reveal_not_found = false); if it holds the birth date or the sex, every requester can read it off the subject, so one claim tells whether the subject is held: do not grant it here, or set reveal_not_found = true (docs/PROTOCOL.md §11.7)",
                "资源 {}：字段 `{field}` 被授权用于核验，而该资源以公民身份号码为主键并隐藏主体是否存在（reveal_not_found = false）；如果该字段存放出生日期或性别，任何请求方都能从主体中读出它，一次声明就能得知主体是否存在：请不要在此授权它，或设置 reveal_not_found = true（docs/PROTOCOL.md §11.7）",
                r.code
            ));
        }
        let rule = r
            .fields
            .iter()
            .find(|(n, _)| n == field)
            .map(|(_, rule)| rule);
        if delivered
            && !v.is_enumerable(field)
            && matches!(
                rule,
                Some(
                    Rule::Mask(
                        crate::policy::rule::Mask::Mobile
                            | crate::policy::rule::Mask::CitizenId { .. }
                    ) | Rule::Generalize(_)
                )
            )
        {
            out.push(exchange_protocol::tr!(
                "resource {}: field `{field}` is granted for verification and also delivered as {}: a requester holding that form has few candidates left to guess; list it in `enumerable` for the stricter budget (docs/CONFIG.md)",
                "资源 {}：字段 `{field}` 被授权用于核验，同时又以 {} 形式交付：持有该形式的请求方只剩很少的候选值可猜；请把它列入 `enumerable`，使用更严格的额度（docs/CONFIG.md）",
                r.code,
                rule.expect("matched")
            ));
        }
    }
    out
}

/// A certificate expiring within this many days is warned about.
pub const EXPIRY_WARNING_DAYS: i64 = exchange_protocol::tls::EXPIRY_WARNING_DAYS;

/// Reports the expiry of the node certificate and of every CA certificate the agent trusts
/// (hub CA, source CAs), and with `[verify]` of its server certificate and client CA: days
/// left, a warning within [`EXPIRY_WARNING_DAYS`], an error once expired. Returns false when
/// a certificate has expired or cannot be read.
fn certificates(config: &Config, out: &mut String) -> bool {
    let mut files = vec![
        ("node certificate", config.hub.tls.cert.clone()),
        ("hub CA", config.hub.tls.ca.clone()),
    ];
    if let Some(v) = &config.verify {
        files.push(("verification certificate", v.tls.cert.clone()));
        files.push(("verification client CA", v.tls.ca.clone()));
    }
    for spec in config.sources.values() {
        if let Some(ca) = &spec.ca {
            files.push(("source CA", ca.clone()));
        }
    }
    let now = chrono::Utc::now().timestamp();
    let mut ok = true;
    for (what, path) in files {
        let certs = match exchange_protocol::tls::certificate_validity(what, &path) {
            Ok(c) => c,
            Err(e) => {
                let _ = writeln!(out, "{}", exchange_protocol::tr!("error: {e}", "错误：{e}"));
                ok = false;
                continue;
            }
        };
        for c in certs {
            let line = c.describe(what, &path, now);
            match c.expiry(now) {
                exchange_protocol::tls::Expiry::Expired => {
                    ok = false;
                    let _ = writeln!(out, "{line}");
                }
                _ => {
                    let _ = writeln!(out, "  {line}");
                }
            }
        }
    }
    ok
}

/// With `[verify]`: where the verification service listens, its budgets and its grants by
/// requester (each resource with the fields it may compare; an expired grant says so).
fn describe_verification(config: &Config, out: &mut String) {
    let Some(v) = &config.verify else {
        return;
    };
    let (listen, q) = (v.listen, &v.quotas);
    let _ = writeln!(
        out,
        "{}",
        tr!(
            "  verification service listens on {listen} ([verify] listen)",
            "  核验服务监听 {listen}（[verify] listen）"
        )
    );
    let (items, subjects, mismatch, enumerable) = (
        q.items_per_minute,
        q.subjects_per_day,
        q.mismatch_lockout,
        q.enumerable_lockout,
    );
    let window = crate::text::duration_text(q.lockout);
    let _ = writeln!(
        out,
        "{}",
        tr!(
            "  verification budgets per requester and resource: {items} items a minute, {subjects} distinct subjects a day, {mismatch} answers other than match per field of a subject within {window} ({enumerable} for an enumerable field)",
            "  核验额度（每个请求方、每个资源）：每分钟 {items} 项，每天 {subjects} 个不同对象，同一对象同一字段在 {window} 内至多 {mismatch} 次非“一致”答复（可枚举字段 {enumerable} 次）"
        )
    );
    let now = chrono::Utc::now();
    let mut by_requester: std::collections::BTreeMap<&str, Vec<String>> = Default::default();
    for r in &config.resources {
        for g in &r.verification.grants {
            let fields = g.fields.join(", ");
            let expired = g.expires.filter(|t| *t <= now).map(|t| {
                let t = beijing_time(t);
                tr!("; EXPIRED (ended {t})", "；已过期（{t} 终止）")
            });
            by_requester.entry(&g.requester).or_default().push(format!(
                "{} ({fields}{})",
                r.code,
                expired.unwrap_or_default()
            ));
        }
    }
    let (count, n) = (
        by_requester.values().map(Vec::len).sum::<usize>(),
        by_requester.len(),
    );
    let _ = writeln!(
        out,
        "{}",
        tr!(
            "  verification grants: {count} to {n} requesters",
            "  核验授权：{count} 项，{n} 个请求方"
        )
    );
    for (requester, grants) in by_requester {
        let _ = writeln!(out, "    {requester} → {}", grants.join("; "));
    }
}

/// An instant as the configuration writes grant ends: RFC 3339 in UTC+8.
fn beijing_time(t: chrono::DateTime<chrono::Utc>) -> String {
    let utc8 = chrono::FixedOffset::east_opt(8 * 3600).expect("UTC+8 is an offset");
    t.with_timezone(&utc8)
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Reports the next update of every CRL the agent reads (`[hub] crl`, `[verify] crl`): a
/// warning once it is past (the list stays in force; the CA should have published a newer
/// one). CRLs are usually reissued every few days, so an approaching date is no warning.
fn revocation_lists(config: &Config, out: &mut String) {
    let mut files = config.hub.tls.crls.clone();
    if let Some(v) = &config.verify {
        files.extend(v.tls.crls.iter().cloned());
    }
    let now = chrono::Utc::now().timestamp();
    for c in exchange_protocol::tls::crl_validity(&files).unwrap_or_default() {
        let Some(next) = c.next_update else {
            let (path, issuer) = (c.path.display(), &c.issuer);
            let _ = writeln!(
                out,
                "{}",
                tr!(
                    "  CRL {path} of `{issuer}`",
                    "  `{issuer}` 的吊销列表 {path}"
                )
            );
            continue;
        };
        let at = chrono::DateTime::from_timestamp(next, 0)
            .map(|t| t.format("%Y-%m-%d").to_string())
            .unwrap_or_default();
        let (path, issuer) = (c.path.display(), &c.issuer);
        if next < now {
            let _ = writeln!(
                out,
                "{}",
                tr!(
                    "  warning: CRL {path} of `{issuer}` was due for a newer list on {at}; it stays in force, but put the CA's current CRL in its place (吊销列表已过期，请更新)",
                    "  警告：`{issuer}` 的吊销列表 {path} 应在 {at} 更新；它仍然有效，但请换上该 CA 当前的吊销列表"
                )
            );
        } else {
            let _ = writeln!(
                out,
                "{}",
                tr!(
                    "  CRL {path} of `{issuer}` next update {at}",
                    "  `{issuer}` 的吊销列表 {path}，下次更新 {at}"
                )
            );
        }
    }
}

/// Builds the TLS configurations the service would build (the hub client, the verification
/// listener): a certificate that does not match its key, or a CA or CRL rustls refuses, is
/// an error here, before `systemctl reload` sends SIGHUP. Returns false on any.
fn tls_material(config: &Config, out: &mut String) -> bool {
    let mut ok = true;
    if let Err(e) = exchange_protocol::tls::hub_client_config(&config.hub.tls) {
        let _ = writeln!(
            out,
            "{}",
            tr!("error: [hub] TLS: {e}", "错误：[hub] TLS：{e}")
        );
        ok = false;
    }
    if let Some(v) = &config.verify
        && let Err(e) = exchange_protocol::tls::mutual_server_config(&v.tls)
    {
        let _ = writeln!(
            out,
            "{}",
            tr!("error: [verify] TLS: {e}", "错误：[verify] TLS：{e}")
        );
        ok = false;
    }
    ok
}

/// Checks a loaded configuration; returns the verdict and a report for the administrator.
pub async fn check(config: &Config, connect: bool) -> (Verdict, String) {
    let mut out = String::new();
    // Certificates first, so the first line does not call valid what an expired one spoils.
    let mut validity = String::new();
    let certificates_ok = certificates(config, &mut validity) & tls_material(config, &mut validity);
    revocation_lists(config, &mut validity);
    describe(config, certificates_ok, &mut out);
    out.push_str(&validity);
    let mut verdict = if certificates_ok {
        Verdict::Ok
    } else {
        Verdict::Config
    };
    if !connect {
        let _ = writeln!(
            out,
            "{}",
            tr!(
                "Sources and the hub were not contacted (add --connect).",
                "未连接数据源和交换中心（加 --connect 可连接检查）。"
            )
        );
        return (verdict, out);
    }
    exchange_protocol::tls::install_provider();
    for spec in config.sources.values() {
        verdict = verdict.worst(check_source(config, spec, &mut out).await);
    }
    verdict = verdict.worst(check_hub(config, &mut out).await);
    (verdict, out)
}

/// What the configuration says: the node, each resource's fields, share class, warnings and
/// next runs.
fn describe(config: &Config, certificates_ok: bool, out: &mut String) {
    let file = config.file.display();
    let _ = writeln!(
        out,
        "{}",
        if certificates_ok {
            tr!("Configuration {file} is valid.", "配置文件 {file} 有效。")
        } else {
            tr!(
                "Configuration {file} cannot be used: see the errors below.",
                "配置文件 {file} 不能使用：见下面的错误。"
            )
        }
    );
    let (node, department, data) = (
        &config.node.id,
        &config.node.department,
        config.node.data_dir.display(),
    );
    let _ = writeln!(
        out,
        "{}",
        tr!(
            "  node {node} ({department}), data in {data}",
            "  节点 {node}（{department}），数据目录 {data}"
        )
    );
    for r in &config.resources {
        describe_resource(r, out);
    }
    describe_verification(config, out);
    for r in &config.resources {
        let runs: Vec<_> = r
            .schedule
            .next_runs(chrono::Local::now(), 3)
            .iter()
            .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
            .collect();
        let (code, runs) = (&r.code, runs.join(", "));
        let _ = writeln!(
            out,
            "{}",
            tr!(
                "  resource {code}: next runs {runs}",
                "  资源 {code}：下次运行 {runs}"
            )
        );
    }
}

/// One resource: its fields and rules, its share class, warnings about its rules and its
/// approved plain fields.
fn describe_resource(r: &Resource, out: &mut String) {
    let fields: Vec<_> = r
        .fields
        .iter()
        .map(|(n, rule)| format!("{n}={rule}"))
        .collect();
    let share = match r.share {
        Share::None => tr!(
            " — share = none: catalogued, never delivered",
            " — share = none：只登记目录，从不交换"
        ),
        Share::Conditional { deliver: false } => tr!(
            " — conditional: answered by comparison only (deliver = false)",
            " — 有条件共享：只通过核验比对回答（deliver = false）"
        ),
        Share::Conditional { deliver: true } => tr!(
            " — conditional: delivered desensitized",
            " — 有条件共享：脱敏后交换"
        ),
        Share::Unconditional => String::new(),
    };
    let (code, name, source, fields) = (&r.code, &r.name, &r.source, fields.join(", "));
    let _ = writeln!(
        out,
        "{}",
        tr!(
            "  resource {code} ({name}) from `{source}`: {fields}{share}",
            "  资源 {code}（{name}），来自 `{source}`：{fields}{share}"
        )
    );
    for w in rule_warnings(r) {
        let _ = writeln!(out, "{}", tr!("  warning: {w}", "  警告：{w}"));
    }
    if let Some(reason) = &r.plain_reason {
        let plain = r.plain_allowed.join(", ");
        let _ = writeln!(
            out,
            "{}",
            tr!(
                "  resource {code}: plain by approval ({reason}): {plain}",
                "  资源 {code}：经批准原样交换（{reason}）：{plain}"
            )
        );
    }
}

/// A file drop resource: its directory, the files waiting, read and rejected, and its fields'
/// declared types.
fn file_resource(code: &str, file: &crate::config::FileResource, out: &mut String) {
    let dir = file.dir();
    let count = |sub: &str| {
        std::fs::read_dir(dir.join(sub)).map_or(0, |d| {
            d.filter_map(Result::ok)
                .filter(|e| {
                    e.path().is_file() && !e.file_name().to_string_lossy().ends_with(".reason")
                })
                .count()
        })
    };
    let waiting = count("");
    let (done, rejected) = (count("done"), count("rejected"));
    let types = file
        .types
        .iter()
        .map(|(n, t)| format!("{n} {}", t.name()))
        .collect::<Vec<_>>()
        .join(", ");
    let dir = dir.display();
    let _ = writeln!(
        out,
        "{}",
        tr!(
            "  resource {code}: files in {dir}: {waiting} waiting, {done} in done/, {rejected} in rejected/; declared types: {types} (other fields text)",
            "  资源 {code}：文件目录 {dir}：待读 {waiting} 个，done/ 中 {done} 个，rejected/ 中 {rejected} 个；声明的类型：{types}（其余字段为文本）"
        )
    );
}

/// `--connect` for one source: open it, probe it, and describe the columns of each of its
/// resources.
async fn check_source(config: &Config, spec: &SourceSpec, out: &mut String) -> Verdict {
    let connector = match exchange_connectors::open(spec) {
        Ok(c) => c,
        Err(e) => {
            let _ = writeln!(out, "{}", tr!("error: {e}", "错误：{e}"));
            return Verdict::Config;
        }
    };
    match connector.probe().await {
        Ok(p) => probe_warnings(spec, &p, out),
        Err(e) => {
            let _ = writeln!(out, "{}", tr!("error: {e}", "错误：{e}"));
            return Verdict::of_connector(&e);
        }
    }
    let mut verdict = Verdict::Ok;
    for r in config.resources.iter().filter(|r| r.source == spec.name) {
        if let Some(file) = &r.files {
            file_resource(&r.code, file, out);
            continue;
        }
        let plan = Plan::new(r, &config.keys);
        match connector.describe(&plan.selection).await {
            Ok(cols) => {
                verdict = verdict.worst(check_columns(r, &plan, &cols, out));
                cursor_order(config, r, &plan, &*connector, out).await;
            }
            Err(e) => {
                let code = &r.code;
                let _ = writeln!(
                    out,
                    "{}",
                    tr!("error: resource {code}: {e}", "错误：资源 {code}：{e}")
                );
                verdict = verdict.worst(Verdict::of_connector(&e));
            }
        }
    }
    verdict
}

/// Whether an index supplies the cursor order of a pulled incremental resource (the source's
/// plan of the statement a steady-state pull runs): where none does, a warning that says what
/// it costs and the statement a DBA runs to create one, on a line of its own. A warning, never
/// an error: the pulls are correct, only slow.
async fn cursor_order(
    config: &Config,
    r: &Resource,
    plan: &Plan,
    connector: &dyn exchange_connectors::Connector,
    out: &mut String,
) {
    use exchange_connectors::{OrderPlan, OrderRequest};
    let Mode::Incremental { safety_lag, .. } = r.mode else {
        return;
    };
    if !r.share.delivers() {
        return;
    }
    let request = OrderRequest {
        selection: &plan.selection,
        limit: config.batch.max_records,
        bound: exchange_connectors::Bound::Horizon { safety_lag },
    };
    let (code, cursor) = (&r.code, plan.selection.cursor.join(", "));
    let line = match connector.plan_order(&request).await {
        Ok(OrderPlan::Indexed { index: Some(index) }) => tr!(
            "  resource {code}: the cursor order ({cursor}) comes from index {index}",
            "  资源 {code}：游标顺序（{cursor}）由索引 {index} 提供"
        ),
        Ok(OrderPlan::Indexed { index: None }) => tr!(
            "  resource {code}: the cursor order ({cursor}) comes from an index",
            "  资源 {code}：游标顺序（{cursor}）由索引提供"
        ),
        Ok(OrderPlan::Sorted { create_index }) => tr!(
            "  warning: resource {code}: no index supplies the cursor order ({cursor}): every pull reads and sorts the whole table to find the rows after its cursor, so pulls grow slower and load the database more as the table grows. Ask the database's DBA to create one:\n    {create_index}",
            "  警告：资源 {code}：没有索引提供游标顺序（{cursor}）：每次抽取都要读取并排序整张表，才能找到游标之后的行，表越大，抽取越慢，数据库负担也越重。请数据库管理员创建索引：\n    {create_index}"
        ),
        Ok(OrderPlan::Unknown { why }) => {
            let why = unknown_order_text(why, r);
            tr!(
                "  resource {code}: whether an index supplies the cursor order ({cursor}) cannot be told: {why}",
                "  资源 {code}：无法判断是否有索引提供游标顺序（{cursor}）：{why}"
            )
        }
        Err(e) => tr!(
            "  warning: resource {code}: the plan of its page statement cannot be read ({e}); whether an index supplies the cursor order ({cursor}) is unknown",
            "  警告：资源 {code}：无法读取其分页语句的执行计划（{e}）；不知道是否有索引提供游标顺序（{cursor}）"
        ),
    };
    let _ = writeln!(out, "{line}");
}

/// Why the plan of a resource's page statement cannot tell whether an index supplies its
/// cursor order, for people.
fn unknown_order_text(why: exchange_connectors::UnknownOrder, r: &Resource) -> String {
    use exchange_connectors::UnknownOrder;
    match why {
        UnknownOrder::Query => tr!(
            "the resource reads a query whose plan sorts; an index would belong to the tables the query reads",
            "该资源读取的是查询，其执行计划需要排序；索引应建在查询所读的表上"
        ),
        UnknownOrder::View => {
            let view = match &r.relation {
                exchange_connectors::Relation::Table(t) => t.as_str(),
                exchange_connectors::Relation::Query(_) => "query",
            };
            tr!(
                "`{view}` is a view whose plan sorts; an index would belong to the tables under it",
                "`{view}` 是视图，其执行计划需要排序；索引应建在视图所依据的表上"
            )
        }
        UnknownOrder::NothingToRead => tr!(
            "the optimizer found no row to read after the last one, so its plan says nothing about the order",
            "优化器在最后一行之后找不到可读的行，执行计划无法说明顺序"
        ),
        UnknownOrder::NoPlan => tr!("this source shows no plan", "该数据源不提供执行计划"),
    }
}

/// What the probe of a source tells that limits late-commit protection.
fn probe_warnings(spec: &SourceSpec, p: &exchange_connectors::Probe, out: &mut String) {
    let (name, server) = (&spec.name, &p.server);
    let _ = writeln!(
        out,
        "{}",
        tr!("  source {name}: {server}", "  数据源 {name}：{server}")
    );
    if let Some(missing) = p
        .missing_privilege
        .as_ref()
        .filter(|_| !p.sees_open_transactions)
    {
        let _ = writeln!(
            out,
            "{}",
            tr!(
                "  warning: source {name} cannot see other sessions' open transactions; incremental resources fall back to the safety lag alone, and a transaction that commits later than the lag can be missed. {missing}",
                "  警告：数据源 {name} 看不到其他会话未结束的事务；增量资源只能依靠安全延迟，提交晚于该延迟的事务可能被漏掉。{missing}"
            )
        );
        tracing::warn!(source = %spec.name, "Open transactions are not visible; late-commit protection falls back to the safety lag alone.");
    }
    if let Some(replica) = &p.replica {
        let lag = crate::text::duration_text(spec.replica_lag);
        let _ = writeln!(
            out,
            "{}",
            tr!(
                "  warning: source {name} is a replica ({replica}): it cannot see the primary's open transactions, so incremental resources are bounded by its clock minus replica_lag ({lag}) and the safety lag; raise replica_lag if the replica can fall further behind",
                "  警告：数据源 {name} 是副本（{replica}）：看不到主库未结束的事务，因此增量资源以其时钟减去 replica_lag（{lag}）和安全延迟为界；如果副本可能落后更多，请调大 replica_lag"
            )
        );
    }
}

/// A resource's columns as the source describes them: their types against the rules, and
/// cursor or key columns that may hold NULL.
fn check_columns(
    r: &Resource,
    plan: &Plan,
    cols: &[exchange_connectors::ColumnInfo],
    out: &mut String,
) -> Verdict {
    let mut verdict = Verdict::Ok;
    if let Err(e) = crate::policy::check_types(r, cols) {
        let _ = writeln!(out, "{}", tr!("error: {e}", "错误：{e}"));
        verdict = Verdict::Config;
    }
    let text: Vec<_> = cols
        .iter()
        .map(|c| format!("{} {}", c.name, c.source_type))
        .collect();
    let (code, columns) = (&r.code, text.join(", "));
    let _ = writeln!(
        out,
        "{}",
        tr!(
            "  resource {code}: columns {columns}",
            "  资源 {code}：列 {columns}"
        )
    );
    for c in cols
        .iter()
        .filter(|c| c.nullable != Some(false) && plan.selection.cursor.contains(&c.name))
    {
        let column = &c.name;
        let (role, query) = match (c.name == r.key, c.nullable.is_none()) {
            (true, q) => (tr!("key", "键"), q),
            (false, q) => (tr!("cursor", "游标"), q),
        };
        let query = if query {
            tr!(
                " (a query's column: the source cannot tell)",
                "（查询的列：数据源无法判断）"
            )
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "{}",
            tr!(
                "  warning: resource {code}: {role} column `{column}` may hold NULL; such rows have no place in the cursor order and are quarantined (counted every cycle) instead of delivered: make it NOT NULL{query}",
                "  警告：资源 {code}：{role}列 `{column}` 可能为 NULL；这样的行在游标顺序中没有位置，会被隔离（每个周期都计数）而不是交换：请将其设为 NOT NULL{query}"
            )
        );
    }
    verdict
}

/// `--connect` for the hub: a health request over mutual TLS.
async fn check_hub(config: &Config, out: &mut String) -> Verdict {
    if let Some(dirs) = &config.hub.offline {
        return check_offline(config, dirs, out);
    }
    let client = match HubClient::new(config, "00000000000000000000000000000000") {
        Ok(client) => client,
        Err(e) => {
            let _ = writeln!(out, "{}", tr!("error: {e}", "错误：{e}"));
            return Verdict::Config;
        }
    };
    match client.health().await {
        Ok(()) => {
            let url = &config.hub.url;
            let _ = writeln!(
                out,
                "{}",
                tr!(
                    "  hub {url}: reachable over mutual TLS",
                    "  交换中心 {url}：可通过双向 TLS 连接"
                )
            );
            Verdict::Ok
        }
        Err(e) => {
            let _ = writeln!(out, "{}", tr!("error: {e}", "错误：{e}"));
            match e {
                PushError::Tls(_) => Verdict::Config,
                _ => Verdict::Unreachable,
            }
        }
    }
}

/// `--connect` offline: the hub is not contacted; the outbox and inbox must be writable and
/// the node's key able to sign batch files.
fn check_offline(config: &Config, dirs: &crate::config::Offline, out: &mut String) -> Verdict {
    let link = crate::pipeline::push::OfflineLink::new(config, dirs, "0".repeat(32).as_str());
    let probe = |dir: &std::path::Path| {
        exchange_protocol::offline::write_atomic(dir, ".exchange-agent-check", b"")
            .and_then(std::fs::remove_file)
    };
    let mut verdict = Verdict::Ok;
    if let Err(e) = link {
        let _ = writeln!(out, "{}", tr!("error: {e}", "错误：{e}"));
        return Verdict::Config;
    }
    for dir in [&dirs.outbox, &dirs.inbox] {
        match probe(dir) {
            Ok(()) => {}
            Err(e) => {
                let (dir, e) = (dir.display(), exchange_protocol::cause::chain(&e));
                let _ = writeln!(out, "{}", tr!("error: {dir}: {e}", "错误：{dir}：{e}"));
                verdict = Verdict::Config;
            }
        }
    }
    if matches!(verdict, Verdict::Ok) {
        let (outbox, inbox) = (dirs.outbox.display(), dirs.inbox.display());
        let _ = writeln!(
            out,
            "{}",
            tr!(
                "  hub: offline exchange (not contacted); batch files to {outbox}, answers from {inbox}",
                "  交换中心：离线交换（不连接）；批次文件写入 {outbox}，应答从 {inbox} 读取"
            )
        );
    }
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{InvalidKey, Mode};
    use crate::schedule::Schedule;

    #[test]
    fn a_pseudonym_of_kind_other_is_warned_about() {
        let rule = |text: &str, kind: IdKind| Rule::parse(text, kind, None).unwrap();
        let r = Resource {
            code: "R1".into(),
            name: "n".into(),
            share: Share::Unconditional,
            source: "s".into(),
            relation: exchange_connectors::Relation::Table("t".into()),
            key: "ID_NO".into(),
            mode: Mode::Snapshot,
            schedule: Schedule::Every(std::time::Duration::from_secs(60)),
            max_staleness: crate::config::Staleness::WorkingDays(2),
            fields: vec![
                ("id_no".into(), rule("pseudonym", IdKind::Other)),
                ("mobile".into(), rule("pseudonym", IdKind::Mobile)),
                ("nick".into(), rule("pseudonym", IdKind::Other)),
                ("name".into(), rule("mask:name", IdKind::Other)),
            ],
            key_kind: IdKind::Other,
            invalid_key: InvalidKey::Quarantine,
            plain_allowed: Vec::new(),
            plain_reason: None,
            verification: Default::default(),
            locator: Vec::new(),
            files: None,
        };
        let w = rule_warnings(&r);
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(
            w[0].contains("key `id_no`") && w[0].contains("identifier = \"citizen_id\""),
            "{}",
            w[0]
        );
        assert!(w[1].contains("field `nick`"), "{}", w[1]);
    }

    #[test]
    fn verification_grants_that_tell_more_than_their_budget_are_warned_about() {
        use crate::verify::compare::Compare;
        use crate::verify::grant::Grant;
        let rule = |text: &str| Rule::parse(text, IdKind::Other, None).unwrap();
        let resource = |reveal: bool, enumerable: &[&str]| Resource {
            code: "R1".into(),
            name: "n".into(),
            share: Share::Conditional { deliver: true },
            source: "s".into(),
            relation: exchange_connectors::Relation::Table("t".into()),
            key: "id_no".into(),
            mode: Mode::Snapshot,
            schedule: Schedule::Every(std::time::Duration::from_secs(60)),
            max_staleness: crate::config::Staleness::WorkingDays(2),
            fields: vec![
                (
                    "id_no".into(),
                    Rule::parse("pseudonym", IdKind::CitizenId, None).unwrap(),
                ),
                ("birth".into(), rule("generalize:year")),
                ("mobile".into(), rule("mask:mobile")),
                ("name".into(), rule("mask:name")),
            ],
            key_kind: IdKind::CitizenId,
            invalid_key: InvalidKey::Quarantine,
            plain_allowed: Vec::new(),
            plain_reason: None,
            verification: crate::config::verify::Verification {
                compare: [("birth".to_owned(), Compare::Date)].into(),
                grants: vec![Grant {
                    requester: "hub".into(),
                    fields: vec!["birth".into(), "mobile".into()],
                    purposes: None,
                    expires: None,
                    psi: false,
                    psi_enumerable: false,
                }],
                reveal_not_found: reveal,
                enumerable: enumerable.iter().map(|f| f.to_string()).collect(),
            },
            locator: Vec::new(),
            files: None,
        };
        let w = verification_warnings(&resource(false, &[]));
        assert_eq!(w.len(), 3, "{w:#?}");
        assert!(w[0].contains("`birth`") && w[0].contains("read it off the subject"));
        assert!(w[1].contains("`birth`") && w[1].contains("generalize:year"));
        assert!(w[2].contains("`mobile`") && w[2].contains("enumerable"));
        assert!(verification_warnings(&resource(true, &["birth", "mobile"])).is_empty());
    }
}
