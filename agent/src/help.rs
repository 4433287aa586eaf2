//! The Chinese of `exchange-agent --help`: every help text of the command tree (`main.rs`),
//! keyed by its English as clap holds it (a summary without its final period). A test in
//! `main.rs` fails when a text has no entry here.

/// (English, 中文) pairs.
pub const ZH: &[(&str, &str)] = &[
    (
        "After a configuration change stopped a resource: go on from its cursor with the new configuration",
        "配置更改使资源停止后：按新配置从其游标处继续",
    ),
    ("Batch sequence number", "批次序号"),
    ("Batches listed per resource", "每个资源列出的批次数"),
    (
        "Check or export the audit log (SM3-chained, `<data_dir>/audit.jsonl`)",
        "校验或导出审计日志（SM3 链式，`<data_dir>/audit.jsonl`）",
    ),
    (
        "Check the chain: exit 0 if intact, 1 naming the file and line where it breaks (an entry edited, removed, reordered, or the log truncated). Files archived away (`[audit] archive_dir`, or `--archive DIR`) are read too, and every file an `audit.archived` entry names must be there; without an archive the chain is checked from the oldest file present, which an `audit.archived` entry must account for, and the output says the entries before it were not checked",
        "校验哈希链：完好时以 0 退出；断裂时以 1 退出，并指出断裂处的文件和行（条目被修改、删除、调换顺序，或日志被截断）。已归档的文件（`[audit] archive_dir` 或 `--archive DIR`）也会读取，`audit.archived` 条目提到的每个文件都必须在场；没有归档时从现存最早的文件开始校验（须有 `audit.archived` 条目说明其来历），并在输出中说明之前的条目未经校验",
    ),
    (
        "Configuration file [default: $EXCHANGE_AGENT_CONFIG, else /etc/exchange-agent/agent.toml]",
        "配置文件［默认：$EXCHANGE_AGENT_CONFIG，未设置时为 /etc/exchange-agent/agent.toml］",
    ),
    (
        "Contact every source and the hub",
        "连接每个数据源和交换中心",
    ),
    (
        "Deliver every row committed before the command started; exits 0 once the hub acknowledged all of it. While the service runs, the service does the sync",
        "交付命令开始前已提交的每一行；交换中心全部确认后以 0 退出。服务运行时由服务执行同步",
    ),
    (
        "Do it (without: say what it would do)",
        "确认执行（不加时只说明将做什么）",
    ),
    ("Entries listed per resource", "每个资源列出的条目数"),
    (
        "Front-end exchange agent (前置机): pulls shared resources from business databases, keeps only the configured fields, buffers durably and pushes to the hub.",
        "前置机（Front-end exchange agent）：从业务数据库抽取共享资源，只保留配置的字段，持久缓存后推送到交换中心。",
    ),
    (
        "Give up a batch the hub refuses for good: an empty batch takes its place",
        "放弃交换中心永久拒收的批次：以一个空批次取而代之",
    ),
    (
        "Give up after this long in all, pushing included (e.g. \"10m\")",
        "总计超过此时长（含推送）后放弃（例如 \"10m\"）",
    ),
    (
        "How long to wait for transactions open on a source (which hold rows back) to end (e.g. \"5m\")",
        "等待数据源上未结束的事务（它们会暂缓行的读取）结束的时长（例如 \"5m\"）",
    ),
    (
        "List or clear quarantined rows (key and reason, never values)",
        "列出或清除隔离的行（主键和原因，从不含值）",
    ),
    (
        "List, export or discard queued batches",
        "列出、导出或丢弃排队的批次",
    ),
    (
        "Only entries at or after this instant (RFC 3339, e.g. 2026-01-01T00:00:00+08:00)",
        "只输出此时刻及之后的条目（RFC 3339，例如 2026-01-01T00:00:00+08:00）",
    ),
    ("Only this resource", "只看此资源"),
    ("Only this resource code", "只处理此资源代码"),
    (
        "Output file (created 0600; never overwritten). Default: standard output",
        "输出文件（以 0600 创建；从不覆盖）。默认：标准输出",
    ),
    (
        "Per resource: stream, queued batches (oldest first), stop reason, last push error",
        "按资源列出：数据流、排队的批次（最早的在前）、停止原因、最近一次推送错误",
    ),
    ("Print JSON", "输出 JSON"),
    (
        "Print help (see a summary with '-h')",
        "显示帮助（用 '-h' 查看摘要）",
    ),
    (
        "Print help (see more with '--help')",
        "显示帮助（用 '--help' 查看详情）",
    ),
    (
        "Print this message or the help of the given subcommand(s)",
        "显示此信息或指定子命令的帮助",
    ),
    ("Print version", "显示版本"),
    (
        "Read a resource again from the start on a new stream: for a hub that lost batches, a restored data directory or a changed configuration",
        "在新的数据流上从头重新读取资源：用于交换中心丢失了批次、数据目录被恢复或配置已更改的情况",
    ),
    (
        "Read archived files from this directory [default: `[audit] archive_dir`, if set]",
        "从此目录读取已归档的文件［默认：`[audit] archive_dir`（如已设置）］",
    ),
    (
        "Read the resource again from the start on the same stream",
        "在同一数据流上从头重新读取资源",
    ),
    (
        "Read the rows after the given position: one value per cursor column, the key last",
        "读取给定位置之后的行：每个游标列一个值，主键在最后",
    ),
    (
        "Remove a resource's quarantine entries (after fixing the rows)",
        "删除资源的隔离条目（在修正这些行之后）",
    ),
    ("Resource code", "资源代码"),
    (
        "Run the daemon: pull on schedule, push continuously",
        "运行守护进程：按计划抽取，持续推送",
    ),
    (
        "Shape of the log lines on stderr",
        "标准错误上日志行的格式：`text`（便于阅读的行）或 `json`（每行一个 JSON 对象：`timestamp`、`level`、`fields`、`target`）",
    ),
    (
        "Show per resource the cursor, last pull and push, queued and quarantined records",
        "按资源显示游标、最近一次抽取和推送、排队和隔离的记录",
    ),
    (
        "Show, reset or set a resource's cursor",
        "查看、重置或设置资源的游标",
    ),
    (
        "The entries of a resource's row by its raw key, computed into the key as it leaves on this machine (the raw key is never printed, logged or stored)",
        "按原始主键查找资源中某一行的条目：在本机把它算成外发时的主键（原始主键从不输出、记录或保存）",
    ),
    (
        "The most recent quarantined rows per resource",
        "每个资源最近隔离的行",
    ),
    ("The position's values", "该位置的值"),
    (
        "The row's key as it is at the source (e.g. the citizen ID)",
        "该行在数据源中的主键（例如公民身份号码）",
    ),
    (
        "Validate the configuration (exit 2 if invalid); with --connect also reach sources and the hub (exit 3 if unreachable)",
        "校验配置（无效时以 2 退出）；加 --connect 时还连接数据源和交换中心（无法连接时以 3 退出）",
    ),
    ("Where the next pull starts", "下一次抽取从哪里开始"),
    (
        "Write a batch's records (NDJSON, as sent) to a file or standard output",
        "把一个批次的记录（NDJSON，与发送的相同）写入文件或标准输出",
    ),
    (
        "Write the entries, as stored, as NDJSON to standard output (for archiving)",
        "把条目按保存的原样以 NDJSON 写到标准输出（用于归档）",
    ),
];
