//! The receiving end of an agent scenario: `exchange-hub` storing into a fresh PostgreSQL
//! database, or `exchange-bench sink` acknowledging without storing.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::Bench;
use crate::process::{self, Child};

/// Where the hub of an agent scenario stores.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Sink {
    /// `exchange-hub` with a fresh PostgreSQL database.
    Hub,
    /// `exchange-bench sink`: acknowledges without storing.
    AckOnly,
}

/// A running hub or sink.
pub(super) struct RunningHub {
    pub(super) child: Child,
    pub(super) url: String,
    /// The hub's database (none for the sink).
    pub(super) db: Option<String>,
}

impl Bench {
    /// Starts the hub or the sink of the scenario `name`.
    pub(super) async fn start_hub(&mut self, name: &str, sink: Sink) -> anyhow::Result<RunningHub> {
        match sink {
            Sink::AckOnly => self.start_sink(name).await,
            Sink::Hub => {
                let db = self.create_pg(&name.replace('-', "_")).await?;
                let port = free_port()?;
                self.serve_hub(name, port, db).await
            }
        }
    }

    /// `exchange-bench sink` (this executable), on the port it prints.
    async fn start_sink(&self, name: &str) -> anyhow::Result<RunningHub> {
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.arg("sink")
            .arg("--ca")
            .arg(&self.tls.ca)
            .arg("--cert")
            .arg(&self.tls.hub_cert)
            .arg("--key")
            .arg(&self.tls.hub_key)
            .stdout(Stdio::piped());
        let log = self.work.join(format!("{name}-sink.log"));
        let mut child = process::spawn("sink", cmd, Some(&log))?;
        let stdout = child.stdout.take().context("the sink's standard output")?;
        let port = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)
                .map(|_| line.trim().to_owned())
        })
        .await
        .expect("reader task")?;
        Ok(RunningHub {
            child,
            url: format!("https://127.0.0.1:{port}"),
            db: None,
        })
    }

    /// `exchange-hub` listening on `port` and storing into the PostgreSQL database `db`, once
    /// it accepts connections.
    pub(super) async fn serve_hub(
        &self,
        name: &str,
        port: u16,
        db: String,
    ) -> anyhow::Result<RunningHub> {
        let config = self.work.join(format!("{name}-hub.toml"));
        std::fs::write(
            &config,
            format!(
                "[listen]\naddr = \"127.0.0.1:{port}\"\nca = {:?}\ncert = {:?}\nkey = {:?}\n\n[store]\nurl = {:?}\n",
                self.tls.ca,
                self.tls.hub_cert,
                self.tls.hub_key,
                self.pg_url(&db)
            ),
        )?;
        let child = self.spawn_hub(name, &config)?;
        wait_for_port(port).await?;
        Ok(RunningHub {
            child,
            url: format!("https://127.0.0.1:{port}"),
            db: Some(db),
        })
    }

    fn spawn_hub(&self, name: &str, config: &Path) -> anyhow::Result<Child> {
        let mut cmd = Command::new(&self.hub_bin);
        cmd.arg("serve").arg("--config").arg(config);
        // `EXCHANGE_BENCH_HUB_LOG=info` keeps a line per applied batch in `<work>/NAME-hub.log`.
        let filter = std::env::var("EXCHANGE_BENCH_HUB_LOG").unwrap_or_else(|_| "warn".into());
        cmd.env("RUST_LOG", filter).stdout(Stdio::null());
        process::spawn(
            "exchange-hub",
            cmd,
            Some(&self.work.join(format!("{name}-hub.log"))),
        )
    }
}

/// A loopback port that was free a moment ago.
pub(super) fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

async fn wait_for_port(port: u16) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        if Instant::now() > deadline {
            bail!("nothing listens on 127.0.0.1:{port} after 30 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}
