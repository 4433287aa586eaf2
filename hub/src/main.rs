//! `exchange-hub`: the reference hub's command line.
//!
//! Exit codes: 0 success, 2 configuration error, 3 the store is unreachable (`check
//! --connect`), 1 any other failure. Logs go to stderr: text without colour unless stderr is
//! a terminal, or one JSON object per line with `--log-format json`.

mod help;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use exchange_hub::config::HubConfig;
use exchange_hub::export::ExportError;
use exchange_hub::store::{Store, StoreError};
use tracing::info;

/// The reference hub of the exchange: receives batches from agents over mutual TLS.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// The hub's configuration file.
    #[arg(
        long,
        short,
        global = true,
        value_name = "FILE",
        env = "EXCHANGE_HUB_CONFIG",
        default_value = "/etc/exchange-hub/hub.toml"
    )]
    config: PathBuf,
    /// How log lines on stderr look: `text` (colour only on a terminal) or `json` (one
    /// object per line, for journald or a log collector).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "EXCHANGE_HUB_LOG_FORMAT")]
    log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    command: Command,
}

/// The form of log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Listen for agents until SIGTERM or SIGINT.
    Serve,
    /// Print the current records of a resource, one JSON object per line, ordered by key.
    Export {
        /// The resource code.
        #[arg(long, short)]
        resource: String,
    },
    /// Prove where a record came from: the signed batch that last wrote it (node, stream,
    /// seq, time), written with the node's signature and certificate into --out, and the
    /// openssl commands with which anyone checks it.
    Prove {
        /// The resource code.
        #[arg(long, short)]
        resource: String,
        /// The record's key, as the hub holds it.
        #[arg(long, short)]
        key: String,
        /// Where to write the files (created).
        #[arg(long, default_value = "proof")]
        out: PathBuf,
    },
    /// Import the batch files an agent wrote in offline mode (离线交换), carried into DIR: each
    /// authentic file is applied through the same checks as online, in seq order per stream;
    /// the hub's signed answers are written for the agent's [hub] inbox. Prints one line per
    /// file and a summary; exit 0 whatever became of the files, 1 when DIR cannot be read or
    /// the store failed (3: unreachable).
    Import {
        /// The directory holding the batch files (only its top level is read).
        #[arg(value_name = "DIR")]
        dir: PathBuf,
        /// Where to write the answer files (created; default DIR/answers).
        #[arg(long, value_name = "OUT")]
        answers: Option<PathBuf>,
    },
    /// Print the catalogue entries nodes reported (resource, node, entry with field names and
    /// types, time), one JSON object per line, ordered by resource code.
    Catalogue,
    /// Ask an agent's verification service (数据核验) whether claimed values match what it
    /// holds: one subject (--subject, --claim) or a file of them (--file). Prints a table, or
    /// the agent's answer as it came with --json; a refusal exits 1 with the agent's message.
    Verify(VerifyArgs),
    /// Check the configuration file and the TLS material it names; exit 0 if valid, 2 if not.
    /// With --connect also open the store and print its schema version and counts (exit 3 if
    /// it cannot be reached).
    Check {
        /// Also connect to the store (creating or migrating its tables, as `serve` does).
        #[arg(long)]
        connect: bool,
    },
}

/// `exchange-hub verify`.
#[derive(Debug, clap::Args)]
struct VerifyArgs {
    /// The agent's verification service, `https://host:port`.
    #[arg(long)]
    agent: String,
    /// The resource code.
    #[arg(long, short)]
    resource: String,
    /// What the answer is for (用途); must be allowed by the agent's grant.
    #[arg(long)]
    purpose: String,
    /// The case reference (业务流水号).
    #[arg(long)]
    case_ref: String,
    /// The subject's identifier (with --claim).
    #[arg(long, conflicts_with = "file", required_unless_present = "file")]
    subject: Option<String>,
    /// A claimed value, `field=value`; repeat for several fields.
    #[arg(long = "claim", value_name = "FIELD=VALUE", requires = "subject")]
    claims: Vec<String>,
    /// A CSV file: header `subject,<field>,…`, one subject per row; the answers are written
    /// next to it as `<name>.answers.csv`.
    #[arg(long)]
    file: Option<PathBuf>,
    /// Send every claim as HMAC-SM3 under [client] comparison_key_file, never in clear.
    #[arg(long)]
    hmac: bool,
    /// Print the agent's answer as it came (JSON) instead of a table (with --psi: the
    /// answer computed from the agent's, in the same form).
    #[arg(long)]
    json: bool,
    /// Private set intersection: subjects and claims leave only blinded (ECDH over
    /// ristretto255); the agent learns nothing of them. Needs reveal_not_found = true on the
    /// resource; not with --hmac.
    #[arg(long, conflicts_with = "hmac")]
    psi: bool,
    /// The request id (default: generated).
    #[arg(long)]
    request_id: Option<String>,
    /// Items per request with --file (at most the agent's max_items).
    #[arg(long, default_value_t = 1000)]
    batch: usize,
}

/// A failure with the exit code it maps to.
struct Failure {
    /// 2 for a configuration error, 1 otherwise.
    code: u8,
    /// The whole chain of causes.
    error: anyhow::Error,
}

fn config_error(error: impl Into<anyhow::Error>) -> Failure {
    Failure {
        code: 2,
        error: error.into(),
    }
}

fn other_error(error: impl Into<anyhow::Error>) -> Failure {
    Failure {
        code: 1,
        error: error.into(),
    }
}

/// A store failure: exit 3 when the database cannot be reached, 1 otherwise.
fn store_error(error: StoreError) -> Failure {
    let unreachable = matches!(
        error,
        StoreError::Unavailable { .. } | StoreError::Open { .. }
    );
    Failure {
        code: if unreachable { 3 } else { 1 },
        error: error.into(),
    }
}

fn main() -> ExitCode {
    let cli: Cli = exchange_protocol::help::parse(help::ZH);
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => logs.json().with_ansi(false).init(),
    }
    exchange_protocol::tls::install_provider();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!(
                "{}",
                exchange_protocol::tr!(
                    "error: cannot start the async runtime: {e}",
                    "错误：无法启动异步运行时：{e}"
                )
            );
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli.command, cli.config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            let error = &failure.error;
            eprintln!(
                "{}",
                exchange_protocol::tr!("error: {error:#}", "错误：{error:#}")
            );
            ExitCode::from(failure.code)
        }
    }
}

async fn run(command: Command, config: PathBuf) -> Result<(), Failure> {
    match command {
        Command::Check { connect } => check(&config, connect).await,
        Command::Serve => serve(config).await,
        Command::Verify(args) => verify(&config, args).await,
        Command::Catalogue => {
            let loaded = HubConfig::load(&config).map_err(config_error)?;
            let store = Store::open(&loaded.store).await.map_err(other_error)?;
            for c in store.catalogue().await.map_err(other_error)? {
                let entry: serde_json::Value =
                    serde_json::from_str(&c.entry).unwrap_or(serde_json::Value::Null);
                println!(
                    "{}",
                    serde_json::json!({
                        "resource": c.resource,
                        "node": c.node,
                        "entry": entry,
                        "updated_at": c.updated_at,
                    })
                );
            }
            Ok(())
        }
        Command::Prove { resource, key, out } => {
            let loaded = HubConfig::load(&config).map_err(config_error)?;
            let store = Store::open(&loaded.store).await.map_err(other_error)?;
            let report = exchange_hub::proof::prove(&store, &resource, &key, &out)
                .await
                .map_err(other_error)?;
            print!("{report}");
            Ok(())
        }
        Command::Import { dir, answers } => import(&config, &dir, answers).await,
        Command::Export { resource } => {
            let loaded = HubConfig::load(&config).map_err(config_error)?;
            let store = Store::open(&loaded.store).await.map_err(other_error)?;
            let known = store.resources().await.map_err(other_error)?;
            if !known.iter().any(|(r, _)| *r == resource) {
                let list: Vec<&str> = known.iter().map(|(r, _)| r.as_str()).collect();
                let list = if list.is_empty() {
                    exchange_protocol::tr!("none yet", "暂无")
                } else {
                    list.join(", ")
                };
                return Err(other_error(anyhow::anyhow!(exchange_protocol::tr!(
                    "no node has pushed resource `{resource}` to this hub; known resources: {list}",
                    "没有节点向本交换中心推送过资源 `{resource}`；已知资源：{list}"
                ))));
            }
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            let written = exchange_hub::export::write_ndjson(&store, &resource, &mut out)
                .await
                .map(|_| ())
                .and_then(|()| out.flush().map_err(ExportError::Write));
            match written {
                // `exchange-hub export | head`: the reader has what it wanted.
                Err(ExportError::Write(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                    std::mem::forget(out); // its flush on drop would fail again
                    Ok(())
                }
                other => other.map_err(other_error),
            }
        }
    }
}

/// `import`: prints one line per file and the summary, also when the store failed midway
/// (what was done before it).
async fn import(
    file: &std::path::Path,
    dir: &std::path::Path,
    answers: Option<PathBuf>,
) -> Result<(), Failure> {
    use exchange_hub::import::{ANSWERS_DIR, ImportError};
    let config = HubConfig::load(file).map_err(config_error)?;
    let store = Store::open(&config.store).await.map_err(store_error)?;
    let answers = answers.unwrap_or_else(|| dir.join(ANSWERS_DIR));
    let print = |report: &exchange_hub::import::ImportReport| {
        for f in &report.files {
            println!("{}", f.line());
        }
        println!("{}", report.summary(&answers));
    };
    match exchange_hub::import::import(&config, &store, dir, &answers).await {
        Ok(report) => {
            print(&report);
            Ok(())
        }
        Err(e) => {
            if let Some(done) = e.done() {
                print(done);
            }
            let code = match &e {
                ImportError::Tls(_) | ImportError::Signer(_) => 2,
                ImportError::Store { status: 503, .. } => 3,
                _ => 1,
            };
            Err(Failure {
                code,
                error: e.into(),
            })
        }
    }
}

async fn verify(file: &std::path::Path, args: VerifyArgs) -> Result<(), Failure> {
    let config = HubConfig::load(file).map_err(config_error)?;
    if !client_auth(&config)? {
        return Err(config_error(anyhow::anyhow!(
            "{}: {}",
            file.display(),
            no_client_auth()
        )));
    }
    let key = comparison_key(file, &args, &config)?;
    let verifier =
        exchange_hub::verify::Verifier::new(&config.client, &args.agent).map_err(config_error)?;
    let request_id = args
        .request_id
        .clone()
        .unwrap_or_else(exchange_hub::verify::new_request_id);
    let session = VerifySession {
        args: &args,
        verifier,
        key,
        request_id,
    };
    match &args.file {
        Some(file) => session.verify_file(file).await,
        None => session.verify_subject().await,
    }
}

/// `check`: the file, its TLS material and client certificate, and with `connect` the store.
async fn check(config: &std::path::Path, connect: bool) -> Result<(), Failure> {
    let loaded = HubConfig::load(config).map_err(config_error)?;
    loaded
        .server_tls()
        .with_context(|| {
            exchange_protocol::tr!(
                "{}: [listen] TLS material",
                "{}：[listen] TLS 材料",
                config.display()
            )
        })
        .map_err(config_error)?;
    client_certificate(config, &loaded)?;
    let expiry = certificate_expiry(config, &loaded)?;
    let (file, listen, store) = (config.display(), &loaded.listen, &loaded.store);
    println!(
        "{}",
        exchange_protocol::tr!(
            "{file}: valid (listen {listen}, store {store})",
            "{file}：有效（监听 {listen}，存储 {store}）"
        )
    );
    for line in expiry {
        println!("  {line}");
    }
    if connect {
        let store = Store::open(&loaded.store).await.map_err(store_error)?;
        let version = store.schema_version().await.map_err(store_error)?;
        let counts = store.counts().await.map_err(store_error)?;
        let (at, resources, streams, records) = (
            store.describe(),
            counts.resources,
            counts.streams,
            counts.records,
        );
        println!(
            "{}",
            exchange_protocol::tr!(
                "{at}: reachable, schema version {version}; {resources} resources, {streams} streams, {records} records",
                "{at}：可连接，结构版本 {version}；{resources} 个资源，{streams} 个数据流，{records} 条记录"
            )
        );
    }
    Ok(())
}

/// `check`: the expiry of every certificate the hub presents or trusts (`[listen]` cert and
/// ca, `[client]` cert and ca when they are files of their own), one line each with the days
/// left, a warning within 30 days. An expired one is a configuration error (printed, exit 2):
/// agents refuse the hub's, and the hub refuses every agent a CA past its end issued.
fn certificate_expiry(file: &std::path::Path, config: &HubConfig) -> Result<Vec<String>, Failure> {
    use exchange_protocol::tls::{Expiry, certificate_validity};
    let mut files = vec![
        ("[listen] cert", &config.tls.cert),
        ("[listen] ca", &config.tls.ca),
    ];
    if config.client.cert != config.tls.cert {
        files.push(("[client] cert", &config.client.cert));
    }
    if config.client.ca != config.tls.ca {
        files.push(("[client] ca", &config.client.ca));
    }
    let now = chrono::Utc::now().timestamp();
    let (mut lines, mut expired) = (Vec::new(), 0);
    for (what, path) in files {
        let certs = certificate_validity(what, path)
            .map_err(|e| config_error(anyhow::anyhow!("{}: {e}", file.display())))?;
        for c in certs {
            let line = c.describe(what, path, now);
            if c.expiry(now) == Expiry::Expired {
                eprintln!("{line}");
                expired += 1;
            } else {
                lines.push(line);
            }
        }
    }
    if expired > 0 {
        let name = file.display();
        return Err(config_error(anyhow::anyhow!(exchange_protocol::tr!(
            "{name}: {expired} expired certificates (above) cannot be used",
            "{name}：{expired} 个已过期的证书（见上）无法使用"
        ))));
    }
    Ok(lines)
}

/// Why `verify` cannot work with a certificate without clientAuth.
/// Why `exchange-hub verify` cannot use its certificate.
fn no_client_auth() -> String {
    exchange_protocol::tr!(
        "the certificate `exchange-hub verify` presents ([client] cert, else [listen] cert) is not for TLS clients (its extended key usage lacks clientAuth): every agent refuses it in the handshake. Issue the hub a client certificate (extendedKeyUsage = clientAuth, docs/CERTIFICATES.md) and name it in [client] cert and key",
        "`exchange-hub verify` 出示的证书（[client] cert，未设置时为 [listen] cert）不能用于 TLS 客户端（其扩展密钥用法中没有 clientAuth）：每个前置机都会在握手时拒绝它。请为交换中心签发客户端证书（extendedKeyUsage = clientAuth，见 docs/CERTIFICATES.md），并在 [client] cert 和 key 中指定"
    )
}

/// Whether `[client] cert` (else `[listen] cert`) may authenticate a TLS client.
fn client_auth(config: &HubConfig) -> Result<bool, Failure> {
    exchange_protocol::tls::allows_client_auth("the hub's client certificate", &config.client.cert)
        .map_err(|e| config_error(anyhow::Error::new(e)))
}

/// `check`: a `[client]` certificate of its own without clientAuth is an error; the default
/// (`[listen]`'s, a server certificate) only a warning, since a hub may never verify.
fn client_certificate(file: &std::path::Path, config: &HubConfig) -> Result<(), Failure> {
    if client_auth(config)? {
        return Ok(());
    }
    if config.client.cert != config.tls.cert {
        return Err(config_error(anyhow::anyhow!(
            "{}: {}",
            file.display(),
            no_client_auth()
        )));
    }
    let (file, why) = (file.display(), no_client_auth());
    println!(
        "{}",
        exchange_protocol::tr!(
            "warning: {file}: `exchange-hub verify` will not work: {why}",
            "警告：{file}：`exchange-hub verify` 将无法使用：{why}"
        )
    );
    Ok(())
}

/// The comparison key `verify --hmac` sends claims under (`[client] comparison_key_file`);
/// `None` without `--hmac`.
fn comparison_key(
    file: &std::path::Path,
    args: &VerifyArgs,
    config: &HubConfig,
) -> Result<Option<exchange_rules::pseudonym::PseudonymKey>, Failure> {
    if !args.hmac {
        return Ok(None);
    }
    let Some(file) = &config.comparison_key_file else {
        return Err(config_error(anyhow::anyhow!(
            "{}",
            exchange_protocol::tr!(
                "{}: --hmac needs `comparison_key_file` in [client] (the comparison key shared with the provider)",
                "{}：--hmac 需要 [client] 中的 `comparison_key_file`（与提供方共享的比对密钥）",
                file.display()
            )
        )));
    };
    exchange_hub::verify::read_comparison_key(file, config.comparison_key_version)
        .map(Some)
        .map_err(|e| config_error(anyhow::anyhow!(e)))
}

/// One `exchange-hub verify` run: what was asked, and the client that asks it.
struct VerifySession<'a> {
    /// The command line.
    args: &'a VerifyArgs,
    /// The client of the agent's verification service.
    verifier: exchange_hub::verify::Verifier,
    /// The comparison key with `--hmac`.
    key: Option<exchange_rules::pseudonym::PseudonymKey>,
    /// The request id (of the first request, with `--file`).
    request_id: String,
}

impl VerifySession<'_> {
    /// A request with `id` for `items`, with the purpose, case and resource asked for.
    fn request(
        &self,
        id: String,
        items: Vec<exchange_protocol::verify::Item>,
    ) -> exchange_protocol::verify::VerifyRequest {
        exchange_protocol::verify::VerifyRequest {
            request_id: id,
            purpose: self.args.purpose.clone(),
            case_ref: self.args.case_ref.clone(),
            resource: self.args.resource.clone(),
            items,
        }
    }

    /// Sends one request (by private set intersection with `--psi`); the answer, and its
    /// JSON text as `--json` prints it.
    async fn ask(
        &self,
        request: &exchange_protocol::verify::VerifyRequest,
    ) -> Result<(exchange_protocol::verify::VerifyAnswer, String), Failure> {
        if self.args.psi {
            let a = self
                .verifier
                .verify_psi(request)
                .await
                .map_err(other_error)?;
            let text = serde_json::to_string(&a).expect("serializes");
            Ok((a, text))
        } else {
            self.verifier.verify(request).await.map_err(other_error)
        }
    }

    /// `--file`: every row of the claims file, in requests of at most `--batch` items; the
    /// answers written next to it.
    async fn verify_file(&self, file: &std::path::Path) -> Result<(), Failure> {
        use exchange_hub::verify as v;
        let (fields, rows) = v::read_claims(file).map_err(|e| config_error(anyhow::anyhow!(e)))?;
        let mut answers = Vec::with_capacity(rows.len());
        let mut raw = Vec::new();
        let batches = v::batches(&rows, self.args.batch);
        for (n, range) in batches.iter().enumerate() {
            let id = if batches.len() > 1 {
                format!("{}-{}", self.request_id, n + 1)
            } else {
                self.request_id.clone()
            };
            let r = self.request(id, v::items_of(&rows[range.clone()], self.key.as_ref()));
            let (answer, text) = self.ask(&r).await?;
            answers.extend(answer.items);
            raw.push(text);
        }
        let out = v::answers_path(file);
        std::fs::write(&out, v::answers_csv(&fields, &rows, &answers))
            .with_context(|| {
                exchange_protocol::tr!("cannot write {}", "无法写入 {}", out.display())
            })
            .map_err(other_error)?;
        if self.args.json {
            for text in raw {
                println!("{text}");
            }
        } else {
            let matched = answers
                .iter()
                .filter(|a| a.fields.values().all(|r| r.as_str() == "match"))
                .count();
            let (n, out) = (rows.len(), out.display());
            println!(
                "{}",
                exchange_protocol::tr!(
                    "{n} subjects verified, {matched} matching on every claimed field; answers written to {out}",
                    "已核验 {n} 个主体，其中 {matched} 个在所有声称字段上一致；应答已写入 {out}"
                )
            );
        }
        Ok(())
    }

    /// `--subject` with its `--claim`s: one request, its answer printed as a table.
    async fn verify_subject(&self) -> Result<(), Failure> {
        let subject = self.args.subject.clone().unwrap_or_default();
        let claims = self.claims()?;
        let r = self.request(
            self.request_id.clone(),
            vec![exchange_protocol::verify::Item { subject, claims }],
        );
        let (answer, text) = self.ask(&r).await?;
        if self.args.json {
            println!("{text}");
            return Ok(());
        }
        print_answer(&answer);
        Ok(())
    }

    /// The `--claim field=value` arguments, each in clear or as HMAC under the key.
    fn claims(
        &self,
    ) -> Result<std::collections::BTreeMap<String, exchange_protocol::verify::Claim>, Failure> {
        let mut claims = std::collections::BTreeMap::new();
        for c in &self.args.claims {
            let Some((field, value)) = c.split_once('=') else {
                return Err(config_error(anyhow::anyhow!(exchange_protocol::tr!(
                    "--claim `{}`: expected field=value",
                    "--claim `{}`：应写成 字段=值",
                    c.split('=').next().unwrap_or_default()
                ))));
            };
            claims.insert(
                field.trim().to_owned(),
                exchange_hub::verify::claim_of(self.key.as_ref(), field.trim(), value),
            );
        }
        if claims.is_empty() {
            return Err(config_error(anyhow::anyhow!(exchange_protocol::tr!(
                "give at least one --claim field=value",
                "请至少给出一个 --claim 字段=值"
            ))));
        }
        Ok(claims)
    }
}

/// Prints the answer about one subject as a table: found or not, then each field's result
/// (the protocol's word, glossed in Chinese in both languages: docs/HUB.md).
fn print_answer(answer: &exchange_protocol::verify::VerifyAnswer) {
    use exchange_protocol::tr;
    use exchange_protocol::verify::SubjectResult;
    let item = &answer.items[0];
    let id = &answer.request_id;
    println!("{}", tr!("request {id}", "请求 {id}"));
    match item.subject {
        Some(SubjectResult::Found) => {
            println!(
                "{}",
                tr!("subject  found (库中有此号)", "主体  found（库中有此号）")
            )
        }
        Some(SubjectResult::NotFound) => println!(
            "{}",
            tr!(
                "subject  not_found (库中无此号)",
                "主体  not_found（库中无此号）"
            )
        ),
        None => {}
    }
    let width = item
        .fields
        .keys()
        .map(|f| f.chars().count())
        .max()
        .unwrap_or(5);
    for (field, result) in &item.fields {
        let word = match result.as_str() {
            "match" => "一致",
            "mismatch" => "不一致",
            _ => "无值",
        };
        let result = result.as_str();
        println!(
            "{}",
            tr!(
                "{field:<width$}  {result} ({word})",
                "{field:<width$}  {result}（{word}）"
            )
        );
    }
}

async fn serve(path: PathBuf) -> Result<(), Failure> {
    // SIGHUP handled from the start: a `systemctl reload` while the store opens must not
    // kill the hub (the default action); it is taken once the listener serves.
    let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
    let config = HubConfig::load(&path).map_err(config_error)?;
    let tls = config
        .server_tls()
        .with_context(|| {
            exchange_protocol::tr!(
                "{}: [listen] TLS material",
                "{}：[listen] TLS 材料",
                path.display()
            )
        })
        .map_err(config_error)?;
    let store = open_store(&config).await?;
    let listener = listen(&config, &path).await?;
    let load = std::sync::Arc::new(exchange_hub::server::Load::default());
    let admin = AdminListener::start(&config, &path, load.clone()).await?;
    let tls = exchange_protocol::server::ServerTls::new(tls);
    let reloads = tokio::spawn(reload_tls_on_sighup(
        hup,
        path.clone(),
        config.clone(),
        tls.clone(),
        load.clone(),
    ));
    exchange_hub::server::serve(listener, tls, store, config.limits, load, shutdown_signal())
        .await
        .map_err(other_error)?;
    reloads.abort();
    admin.stop().await;
    info!("Hub stopped.");
    Ok(())
}

/// Opens the store and logs what it holds.
async fn open_store(config: &HubConfig) -> Result<Store, Failure> {
    let store = Store::open(&config.store).await.map_err(other_error)?;
    let c = store.counts().await.map_err(other_error)?;
    info!(
        store = %store.describe(),
        resources = c.resources,
        streams = c.streams,
        records = c.records,
        "Store opened."
    );
    Ok(store)
}

/// Binds `listen.addr` and logs the address and the limits it serves with.
async fn listen(
    config: &HubConfig,
    path: &std::path::Path,
) -> Result<tokio::net::TcpListener, Failure> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| {
            exchange_protocol::tr!(
                "cannot listen on {} (listen.addr in {}): is another process using the port, or does binding it need privileges?",
                "无法监听 {}（{} 中的 listen.addr）：是否有其他进程占用该端口，或绑定该端口需要特权？",
                config.listen,
                path.display()
            )
        })
        .map_err(other_error)?;
    let bound = listener
        .local_addr()
        .context(exchange_protocol::tr!(
            "cannot read the listening address",
            "无法读取监听地址"
        ))
        .map_err(other_error)?;
    info!(
        addr = %bound,
        min_tls = %config.tls.min_version,
        max_batch_bytes = config.limits.max_batch_bytes,
        max_concurrent_requests = config.limits.max_concurrent_requests,
        max_connections = config.limits.max_connections,
        body_timeout_secs = config.limits.body_timeout.as_secs(),
        "Hub listening on {bound}."
    );
    Ok(listener)
}

/// The `[admin]` listener's task, if configured, and what tells it to stop.
struct AdminListener {
    /// Tells the listener to stop (dropped unused when there is none).
    stop: tokio::sync::oneshot::Sender<()>,
    /// The listener's task; `None` without `[admin]`.
    task: Option<tokio::task::JoinHandle<()>>,
}

impl AdminListener {
    /// Binds `admin.listen` (when set) and serves `/metrics` and `/health` for `load`.
    async fn start(
        config: &HubConfig,
        path: &std::path::Path,
        load: std::sync::Arc<exchange_hub::server::Load>,
    ) -> Result<Self, Failure> {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let Some(addr) = config.admin else {
            return Ok(AdminListener { stop, task: None });
        };
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| {
                exchange_protocol::tr!(
                    "cannot listen on {addr} (admin.listen in {}): is another process using the port?",
                    "无法监听 {addr}（{} 中的 admin.listen）：是否有其他进程占用该端口？",
                    path.display()
                )
            })
            .map_err(other_error)?;
        info!(addr = %addr, "Admin listener (GET /metrics, GET /health) on {addr}.");
        let task = tokio::spawn(exchange_hub::admin::serve(listener, load, async move {
            let _ = stopped.await;
        }));
        Ok(AdminListener {
            stop,
            task: Some(task),
        })
    }

    /// Tells the listener to stop and waits for it, two seconds at most.
    async fn stop(self) {
        let _ = self.stop.send(());
        if let Some(task) = self.task {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(2), task).await;
        }
    }
}

/// On each SIGHUP (`systemctl reload exchange-hub`): reads the configuration file again and,
/// if it loads, changes nothing that needs a restart (`listen.addr`, `[store]`, `[limits]`,
/// `[admin]`) and its `[listen]` TLS material (ca, cert, key, min_tls, crl) builds, uses that
/// material for every handshake from then on (connections accepted under the old one finish
/// their requests and close). Otherwise nothing changes, and the log and
/// `exchange_hub_config_reload_failed` say so until a reload succeeds.
async fn reload_tls_on_sighup(
    hup: std::io::Result<tokio::signal::unix::Signal>,
    path: PathBuf,
    started: HubConfig,
    tls: exchange_protocol::server::ServerTls,
    load: std::sync::Arc<exchange_hub::server::Load>,
) {
    let mut hup = match hup {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "Cannot watch SIGHUP; TLS changes need a restart.");
            return;
        }
    };
    while hup.recv().await.is_some() {
        let refused = |reason: String| {
            load.reload_refused();
            tracing::error!(file = %path.display(), error = %reason, "Configuration not reloaded (配置未重新加载); the hub goes on with the TLS material in use.");
        };
        let next = match HubConfig::load(&path) {
            Ok(c) => c,
            Err(e) => {
                refused(format!("{:#}", anyhow::Error::new(e)));
                continue;
            }
        };
        let restart = [
            ("listen.addr", next.listen != started.listen),
            (
                "[store]",
                next.store.to_string() != started.store.to_string(),
            ),
            ("[limits]", next.limits != started.limits),
            ("[admin]", next.admin != started.admin),
        ];
        if let Some((key, _)) = restart.iter().find(|(_, changed)| *changed) {
            refused(format!(
                "{key} changed; it takes effect only on a restart (systemctl restart exchange-hub)"
            ));
            continue;
        }
        match next.server_tls() {
            Ok(built) => {
                tls.replace(built);
                load.reloaded();
                info!(file = %path.display(), crls = next.tls.crls.len(), "TLS material reloaded (TLS 证书已重新加载): new connections use it; connections accepted before finish their requests and close.");
            }
            Err(e) => refused(format!("[listen] TLS material: {e}")),
        }
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "Cannot watch SIGTERM; only SIGINT stops the hub.");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM received."),
        _ = tokio::signal::ctrl_c() => info!("SIGINT received."),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_help_text_has_its_chinese() {
        exchange_protocol::help::assert_translated::<super::Cli>(super::help::ZH);
    }
}
