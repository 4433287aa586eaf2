//! The Chinese of `exchange-hub --help`: every help text of the command tree (`main.rs`),
//! keyed by its English as clap holds it (a summary without its final period). A test in
//! `main.rs` fails when a text has no entry here.

/// (English, 中文) pairs.
pub const ZH: &[(&str, &str)] = &[
    (
        "Prove where a record came from: the signed batch that last wrote it (node, stream, seq, time), written with the node's signature and certificate into --out, and the openssl commands with which anyone checks it",
        "证明一条记录的来源：最后写入它的已签名批次（节点、数据流、序号、时间），连同节点的签名和证书写入 --out，并给出任何人都可用 openssl 核对的命令",
    ),
    (
        "Import the batch files an agent wrote in offline mode (离线交换), carried into DIR: each authentic file is applied through the same checks as online, in seq order per stream; the hub's signed answers are written for the agent's [hub] inbox. Prints one line per file and a summary; exit 0 whatever became of the files, 1 when DIR cannot be read or the store failed (3: unreachable)",
        "导入前置机在离线模式下写出、被带入 DIR 的批次文件（离线交换）：每个真实可信的文件按数据流内的序号顺序、经与在线相同的检查应用；交换中心签名的应答写出，供带回前置机的 [hub] inbox。每个文件输出一行，最后输出汇总；无论文件结果如何均以 0 退出，DIR 无法读取或存储出错时以 1 退出（无法连接时为 3）",
    ),
    (
        "The directory holding the batch files (only its top level is read)",
        "存放批次文件的目录（只读取其顶层）",
    ),
    (
        "Where to write the answer files (created; default DIR/answers)",
        "应答文件写入的目录（自动创建；默认为 DIR/answers）",
    ),
    (
        "The record's key, as the hub holds it",
        "记录的主键（交换中心所存的形式）",
    ),
    (
        "Where to write the files (created)",
        "文件写入的目录（自动创建）",
    ),
    (
        "A CSV file: header `subject,<field>,…`, one subject per row; the answers are written next to it as `<name>.answers.csv`",
        "一个 CSV 文件：表头为 `subject,<字段>,…`，每行一个主体；应答写在它旁边的 `<name>.answers.csv` 中",
    ),
    (
        "A claimed value, `field=value`; repeat for several fields",
        "一个待核验的值，`字段=值`；多个字段请重复此选项",
    ),
    (
        "Also connect to the store (creating or migrating its tables, as `serve` does)",
        "同时连接存储（与 `serve` 一样创建或迁移其表）",
    ),
    (
        "Ask an agent's verification service (数据核验) whether claimed values match what it holds: one subject (--subject, --claim) or a file of them (--file). Prints a table, or the agent's answer as it came with --json; a refusal exits 1 with the agent's message",
        "询问前置机的核验服务（数据核验）所声明的值是否与其持有的一致：一个主体（--subject、--claim）或一个主体文件（--file）。输出表格，加 --json 时按原样输出前置机的应答；被拒绝时以 1 退出并给出前置机的说明",
    ),
    (
        "Check the configuration file and the TLS material it names; exit 0 if valid, 2 if not. With --connect also open the store and print its schema version and counts (exit 3 if it cannot be reached)",
        "检查配置文件及其指定的 TLS 材料；有效时以 0 退出，否则以 2 退出。加 --connect 时还打开存储并输出其模式版本和计数（无法连接时以 3 退出）",
    ),
    (
        "How log lines on stderr look: `text` (colour only on a terminal) or `json` (one object per line, for journald or a log collector)",
        "标准错误上日志行的格式：`text`（仅在终端上着色）或 `json`（每行一个对象，供 journald 或日志采集器使用）",
    ),
    (
        "Items per request with --file (at most the agent's max_items)",
        "使用 --file 时每个请求的条目数（不超过前置机的 max_items）",
    ),
    (
        "Listen for agents until SIGTERM or SIGINT",
        "监听前置机，直到收到 SIGTERM 或 SIGINT",
    ),
    (
        "Print help (see a summary with '-h')",
        "显示帮助（用 '-h' 查看摘要）",
    ),
    (
        "Print help (see more with '--help')",
        "显示帮助（用 '--help' 查看详情）",
    ),
    (
        "Print the agent's answer as it came (JSON) instead of a table (with --psi: the answer computed from the agent's, in the same form)",
        "按原样输出前置机的应答（JSON），而不是表格（加 --psi 时：由前置机应答算出的结果，形式相同）",
    ),
    (
        "Print the catalogue entries nodes reported (resource, node, entry with field names and types, time), one JSON object per line, ordered by resource code",
        "输出各节点上报的目录条目（资源、节点、含字段名和类型的条目、时间），每行一个 JSON 对象，按资源代码排序",
    ),
    (
        "Print the current records of a resource, one JSON object per line, ordered by key",
        "输出资源的当前记录，每行一个 JSON 对象，按主键排序",
    ),
    (
        "Print this message or the help of the given subcommand(s)",
        "显示此信息或指定子命令的帮助",
    ),
    ("Print version", "显示版本"),
    (
        "Private set intersection: subjects and claims leave only blinded (ECDH over ristretto255); the agent learns nothing of them. Needs reveal_not_found = true on the resource; not with --hmac",
        "隐私集合求交：主体和声明只以盲化形式发出（基于 ristretto255 的 ECDH）；前置机对其一无所知。需要资源设置 reveal_not_found = true；不能与 --hmac 同用",
    ),
    (
        "Reference hub of the exchange: receives batches from agents over mutual TLS and stores them.",
        "交换中心参考实现：通过双向 TLS 接收前置机的批次并存储。",
    ),
    (
        "Send every claim as HMAC-SM3 under [client] comparison_key_file, never in clear",
        "每个声明都以 [client] comparison_key_file 下的 HMAC-SM3 发送，从不明文发送",
    ),
    (
        "The agent's verification service, `https://host:port`",
        "前置机的核验服务，`https://host:port`",
    ),
    (
        "The case reference (业务流水号)",
        "业务流水号（case reference）",
    ),
    ("The hub's configuration file", "交换中心的配置文件"),
    (
        "The request id (default: generated)",
        "请求编号（默认：自动生成）",
    ),
    ("The resource code", "资源代码"),
    (
        "The subject's identifier (with --claim)",
        "主体的标识（与 --claim 同用）",
    ),
    (
        "What the answer is for (用途); must be allowed by the agent's grant",
        "应答的用途；必须是前置机授权所允许的",
    ),
];
