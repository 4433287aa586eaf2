//! The agent under test: an `agent.toml` written by the test, and the `exchange-agent` binary
//! run on it (`sync`, `check`, `status`, `run`).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::pki::Pki;

/// The department code written into every test configuration (a valid 统一社会信用代码).
pub const DEPARTMENT: &str = "11330100MB0123456W";

/// How long one command may run before the test kills it and fails.
const COMMAND_LIMIT: Duration = Duration::from_secs(300);

/// A TOML basic string.
pub fn q(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

/// `[[sources]]`.
#[derive(Debug, Clone)]
pub struct Source {
    /// `name`.
    pub name: String,
    /// `kind`: postgres, mysql or sqlite.
    pub kind: String,
    /// `url`.
    pub url: String,
}

/// How a resource is read.
#[derive(Debug, Clone)]
pub enum Mode {
    /// `mode = "incremental"` with this cursor and `safety_lag = "0s"`.
    Incremental(Vec<String>),
    /// `mode = "snapshot"`.
    Snapshot,
}

/// `[[resources]]`.
#[derive(Debug, Clone)]
pub struct Resource {
    /// `code`.
    pub code: String,
    /// `source`.
    pub source: String,
    /// `table = …` (or, starting with SELECT, `query = …`).
    pub relation: String,
    /// `key`.
    pub key: String,
    /// `mode` and `cursor`.
    pub mode: Mode,
    /// `every`.
    pub every: String,
    /// `[resources.fields]`, in order. A rule starting with `{` is written as is (an inline
    /// table: `{ rule = "pseudonym", identifier = "citizen_id" }`).
    pub fields: Vec<(String, String)>,
    /// `share`.
    pub share: String,
    /// More lines for the resource, written as is (`deliver = true`, `plain_allowed = […]`).
    pub extra: Vec<String>,
}

impl Resource {
    /// An incremental resource over `table` with cursor `[updated_at, <key>]`.
    pub fn incremental(code: &str, source: &str, table: &str, key: &str) -> Resource {
        Resource {
            code: code.to_owned(),
            source: source.to_owned(),
            relation: table.to_owned(),
            key: key.to_owned(),
            mode: Mode::Incremental(vec!["updated_at".to_owned(), key.to_owned()]),
            every: "1s".to_owned(),
            fields: Vec::new(),
            share: "unconditional".to_owned(),
            extra: Vec::new(),
        }
    }

    /// Sets `share` and adds lines such as `deliver = true`.
    pub fn share(mut self, share: &str, extra: &[&str]) -> Resource {
        self.share = share.to_owned();
        self.extra = extra.iter().map(|l| l.to_string()).collect();
        self
    }

    /// A snapshot resource over `table`.
    pub fn snapshot(code: &str, source: &str, table: &str, key: &str) -> Resource {
        Resource {
            mode: Mode::Snapshot,
            ..Self::incremental(code, source, table, key)
        }
    }

    /// Sets `[resources.fields]`.
    pub fn fields(mut self, fields: &[(&str, &str)]) -> Resource {
        self.fields = fields
            .iter()
            .map(|(c, r)| (c.to_string(), r.to_string()))
            .collect();
        self
    }
}

/// An agent configuration, written as TOML by [`AgentConfig::write`].
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// `node.id`.
    pub node_id: String,
    /// `node.data_dir`.
    pub data_dir: PathBuf,
    /// `hub.url`.
    pub hub_url: String,
    /// `hub.ca`.
    pub ca: PathBuf,
    /// `hub.cert`.
    pub cert: PathBuf,
    /// `hub.key`.
    pub key: PathBuf,
    /// `hub.timeout`.
    pub hub_timeout: String,
    /// `queue.max_bytes`.
    pub queue_max_bytes: String,
    /// `batch.max_records`.
    pub max_records: usize,
    /// `batch.max_bytes`.
    pub max_bytes: String,
    /// `[[sources]]`.
    pub sources: Vec<Source>,
    /// `[[resources]]`.
    pub resources: Vec<Resource>,
    /// `[policy]` lines, written as is.
    pub policy: Vec<String>,
    /// `hub.crl`.
    pub hub_crl: Vec<PathBuf>,
    /// More `[hub]` lines, written as they are (`mode = "offline"`, …).
    pub hub_extra: Vec<String>,
}

impl AgentConfig {
    /// A configuration for node `node` using the PKI's node certificate, the queue in
    /// `<dir>/agent-data`, pushing to `hub_url`.
    pub fn new(dir: &Path, pki: &Pki, node: &str, hub_url: &str) -> AgentConfig {
        AgentConfig {
            node_id: node.to_owned(),
            data_dir: dir.join("agent-data"),
            hub_url: hub_url.to_owned(),
            ca: pki.ca_cert.clone(),
            cert: pki.node_cert.clone(),
            key: pki.node_key.clone(),
            hub_timeout: "10s".to_owned(),
            queue_max_bytes: "256MiB".to_owned(),
            max_records: 1000,
            max_bytes: "4MiB".to_owned(),
            sources: Vec::new(),
            resources: Vec::new(),
            policy: Vec::new(),
            hub_crl: Vec::new(),
            hub_extra: Vec::new(),
        }
    }

    /// Offline exchange: batch files to `outbox`, answers from `inbox`.
    pub fn offline(mut self, outbox: &Path, inbox: &Path) -> AgentConfig {
        self.hub_extra = vec![
            "mode = \"offline\"".to_owned(),
            format!("outbox = {}", q(&outbox.display().to_string())),
            format!("inbox = {}", q(&inbox.display().to_string())),
        ];
        self
    }

    /// Adds `[policy]` lines (key files).
    pub fn policy(mut self, lines: &[&str]) -> AgentConfig {
        self.policy = lines.iter().map(|l| l.to_string()).collect();
        self
    }

    /// Adds a source.
    pub fn source(mut self, name: &str, kind: &str, url: &str) -> AgentConfig {
        self.sources.push(Source {
            name: name.to_owned(),
            kind: kind.to_owned(),
            url: url.to_owned(),
        });
        self
    }

    /// Adds a resource.
    pub fn resource(mut self, resource: Resource) -> AgentConfig {
        self.resources.push(resource);
        self
    }

    /// Sets `batch.max_records`.
    pub fn max_records(mut self, n: usize) -> AgentConfig {
        self.max_records = n;
        self
    }

    /// The TOML text.
    pub fn to_toml(&self) -> String {
        let mut t = String::new();
        let p = |p: &Path| q(&p.display().to_string());
        let _ = writeln!(
            t,
            "[node]\nid = {}\ndepartment = {}\ndata_dir = {}\n",
            q(&self.node_id),
            q(DEPARTMENT),
            p(&self.data_dir)
        );
        let _ = writeln!(
            t,
            "[hub]\nurl = {}\nca = {}\ncert = {}\nkey = {}\ntimeout = {}\ncrl = [{}]\n",
            q(&self.hub_url),
            p(&self.ca),
            p(&self.cert),
            p(&self.key),
            q(&self.hub_timeout),
            self.hub_crl
                .iter()
                .map(|c| p(c))
                .collect::<Vec<_>>()
                .join(", ")
        );
        for line in &self.hub_extra {
            let _ = writeln!(t, "{line}");
        }
        let _ = writeln!(t, "[queue]\nmax_bytes = {}\n", q(&self.queue_max_bytes));
        let _ = writeln!(
            t,
            "[batch]\nmax_records = {}\nmax_bytes = {}\n",
            self.max_records,
            q(&self.max_bytes)
        );
        if !self.policy.is_empty() {
            let _ = writeln!(t, "[policy]\n{}\n", self.policy.join("\n"));
        }
        for s in &self.sources {
            let _ = writeln!(
                t,
                "[[sources]]\nname = {}\nkind = {}\nurl = {}\n",
                q(&s.name),
                q(&s.kind),
                q(&s.url)
            );
        }
        for r in &self.resources {
            let _ = writeln!(
                t,
                "[[resources]]\ncode = {}\nname = {}\nshare = {}\nsource = {}",
                q(&r.code),
                q(&format!("测试资源 {}", r.code)),
                q(&r.share),
                q(&r.source)
            );
            for line in &r.extra {
                let _ = writeln!(t, "{line}");
            }
            if r.relation
                .trim_start()
                .to_ascii_lowercase()
                .starts_with("select")
            {
                let _ = writeln!(t, "query = {}", q(&r.relation));
            } else {
                let _ = writeln!(t, "table = {}", q(&r.relation));
            }
            let _ = writeln!(t, "key = {}", q(&r.key));
            match &r.mode {
                Mode::Incremental(cursor) => {
                    let cursor: Vec<String> = cursor.iter().map(|c| q(c)).collect();
                    let _ = writeln!(
                        t,
                        "mode = \"incremental\"\ncursor = [{}]\nsafety_lag = \"0s\"",
                        cursor.join(", ")
                    );
                }
                Mode::Snapshot => {
                    let _ = writeln!(t, "mode = \"snapshot\"");
                }
            }
            let _ = writeln!(t, "every = {}\n\n[resources.fields]", q(&r.every));
            for (column, rule) in &r.fields {
                if rule.starts_with('{') {
                    let _ = writeln!(t, "{} = {rule}", q(column));
                } else {
                    let _ = writeln!(t, "{} = {}", q(column), q(rule));
                }
            }
            t.push('\n');
        }
        t
    }

    /// Writes the configuration to `path`.
    pub fn write(&self, path: &Path) -> Agent {
        std::fs::write(path, self.to_toml()).expect("write agent.toml");
        Agent {
            config: path.to_owned(),
        }
    }
}

/// What a finished command printed and how it exited.
#[derive(Debug, Clone)]
pub struct Output {
    /// The command, for messages.
    pub command: String,
    /// Exit code (`None`: killed by a signal).
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Output {
    /// Standard output and standard error together.
    pub fn text(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }

    /// Fails the test unless the command exited with `code`.
    #[track_caller]
    pub fn assert_code(&self, code: i32) -> &Output {
        assert_eq!(self.code, Some(code), "expected exit code {code}; {self}");
        self
    }

    /// Fails the test unless `text()` contains every one of `needles`.
    #[track_caller]
    pub fn assert_mentions(&self, needles: &[&str]) -> &Output {
        let text = self.text();
        for n in needles {
            assert!(
                text.contains(n),
                "expected the output to mention `{n}`; {self}"
            );
        }
        self
    }
}

impl std::fmt::Display for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "`{}` exited with {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.command,
            self.code
                .map(|c| c.to_string())
                .unwrap_or_else(|| "a signal".into()),
            self.stdout.trim_end(),
            self.stderr.trim_end()
        )
    }
}

/// Runs a binary to completion (killing it after [`COMMAND_LIMIT`]).
pub async fn run(bin: &Path, args: &[&str]) -> Output {
    run_with(bin, args, &[]).await
}

/// [`run`] with these environment variables set (`EXCHANGE_LANG`, …).
pub async fn run_with(bin: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let command = format!(
        "{} {}",
        bin.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        args.join(" ")
    );
    let child = tokio::process::Command::new(bin)
        .args(args)
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
    let out = tokio::time::timeout(COMMAND_LIMIT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("`{command}` did not finish within {COMMAND_LIMIT:?}"))
        .unwrap_or_else(|e| panic!("`{command}` failed: {e}"));
    Output {
        command,
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// An agent configuration on disk, and the `exchange-agent` commands on it.
#[derive(Debug, Clone)]
pub struct Agent {
    /// The configuration file.
    pub config: PathBuf,
}

impl Agent {
    /// An agent for an existing configuration file.
    pub fn at(config: &Path) -> Agent {
        Agent {
            config: config.to_owned(),
        }
    }

    fn config_arg(&self) -> String {
        self.config.display().to_string()
    }

    /// `exchange-agent sync --config F --timeout T`.
    pub async fn sync(&self, timeout: &str) -> Output {
        run(
            &crate::bins::agent(),
            &["sync", "--config", &self.config_arg(), "--timeout", timeout],
        )
        .await
    }

    /// `exchange-agent <args> --config F`: any command on this configuration.
    pub async fn cmd(&self, args: &[&str]) -> Output {
        let config = self.config_arg();
        let mut all = args.to_vec();
        all.extend(["--config", &config]);
        run(&crate::bins::agent(), &all).await
    }

    /// `exchange-agent sync` until it exits 0; fails the test after `deadline`.
    pub async fn sync_until_complete(&self, deadline: Duration) -> Output {
        let started = Instant::now();
        loop {
            let out = self.sync("60s").await;
            if out.code == Some(0) {
                return out;
            }
            if started.elapsed() > deadline {
                panic!(
                    "`exchange-agent sync` did not complete within {deadline:?}; last run: {out}"
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// `exchange-agent sync` that must exit 0 in one go.
    #[track_caller]
    pub fn sync_ok(&self) -> impl std::future::Future<Output = Output> + '_ {
        let caller = std::panic::Location::caller();
        async move {
            let out = self.sync("120s").await;
            assert_eq!(out.code, Some(0), "sync failed (at {caller}); {out}");
            out
        }
    }

    /// `exchange-agent check --config F [--connect]`.
    pub async fn check(&self, connect: bool) -> Output {
        let config = self.config_arg();
        let mut args = vec!["check", "--config", &config];
        if connect {
            args.push("--connect");
        }
        run(&crate::bins::agent(), &args).await
    }

    /// `exchange-agent status --config F --json`, parsed.
    pub async fn status(&self) -> serde_json::Value {
        let out = run(
            &crate::bins::agent(),
            &["status", "--config", &self.config_arg(), "--json"],
        )
        .await;
        out.assert_code(0);
        serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("status --json is not JSON ({e}); {out}"))
    }

    /// `exchange-agent status --config F --json`, parsed; `None` when it fails (e.g. a daemon
    /// just started and has not written its status file yet). For polling.
    pub async fn try_status(&self) -> Option<serde_json::Value> {
        let out = run(
            &crate::bins::agent(),
            &["status", "--config", &self.config_arg(), "--json"],
        )
        .await;
        if out.code != Some(0) {
            return None;
        }
        serde_json::from_str(&out.stdout).ok()
    }

    /// The batches of resource `code` still queued, from `status --json`; `None` while there
    /// is no status to read. For polling.
    pub async fn queued_batches(&self, code: &str) -> Option<u64> {
        let status = self.try_status().await?;
        status["resources"]
            .as_array()?
            .iter()
            .find(|r| r["code"] == code)?["queued_batches"]
            .as_u64()
    }

    /// The status of one resource from `status --json`.
    pub async fn resource_status(&self, code: &str) -> serde_json::Value {
        let status = self.status().await;
        status["resources"]
            .as_array()
            .and_then(|rs| rs.iter().find(|r| r["code"] == code))
            .cloned()
            .unwrap_or_else(|| panic!("status --json has no resource {code}: {status}"))
    }

    /// Starts `exchange-agent run --config F` with its output appended to `log`.
    pub fn spawn_run(&self, log: &Path) -> tokio::process::Child {
        self.spawn(&["run", "--config", &self.config_arg()], log)
    }

    /// Starts `exchange-agent <args>` with its output appended to `log`.
    pub fn spawn(&self, args: &[&str], log: &Path) -> tokio::process::Child {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("open the agent's log");
        tokio::process::Command::new(crate::bins::agent())
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .expect("start exchange-agent")
    }
}

/// The number in `"<code>: pulled N records"` of a sync report.
pub fn pulled(out: &Output, code: &str) -> u64 {
    let prefix = format!("{code}: pulled ");
    out.stdout
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no `{prefix}N records` line; {out}"))
}

/// Sends SIGTERM to `child` (the way systemd stops the service) and waits for it to exit;
/// fails the test if it has not exited within [`crate::DEADLINE`].
pub async fn terminate(child: &mut tokio::process::Child) -> std::process::ExitStatus {
    let pid = child.id().expect("the process is still running");
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("run kill -TERM");
    assert!(status.success(), "kill -TERM {pid} failed");
    tokio::time::timeout(crate::DEADLINE, child.wait())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "process {pid} did not exit within {:?} of SIGTERM",
                crate::DEADLINE
            )
        })
        .expect("wait for the process")
}
