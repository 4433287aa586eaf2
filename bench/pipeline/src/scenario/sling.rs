//! The peer: sling, a full refresh from either source into PostgreSQL.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

use super::table::SourceTable;
use super::{Bench, limit};
use crate::process;
use crate::report::Row;

impl Bench {
    /// `sling-linux-amd64` (PyPI): the binary given, or installed into a virtualenv.
    pub(super) fn sling_binary(&self) -> anyhow::Result<PathBuf> {
        if let Some(b) = &self.options.sling {
            return Ok(b.clone());
        }
        let venv = self.work.parent().unwrap_or(&self.work).join("bench-venv");
        let find = || -> Option<PathBuf> {
            let lib = venv.join("lib");
            for py in std::fs::read_dir(&lib).ok()? {
                let bin = py
                    .ok()?
                    .path()
                    .join("site-packages/sling_linux_amd64/bin/sling-linux-amd64");
                if bin.exists() {
                    return Some(bin);
                }
            }
            None
        };
        if let Some(bin) = find() {
            return Ok(bin);
        }
        eprintln!("Installing sling-linux-amd64 into {}…", venv.display());
        let ok = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .context("python3 -m venv")?
            .success()
            && Command::new(venv.join("bin/pip"))
                .args(["install", "--quiet", "sling-linux-amd64"])
                .status()
                .context("pip install sling-linux-amd64")?
                .success();
        if !ok {
            bail!("cannot install sling-linux-amd64 from PyPI (or pass --sling PATH)");
        }
        find().context("sling-linux-amd64 installed, but its binary is not where expected")
    }

    /// A full refresh of `table` from `source` (`pg` or `mariadb`) into `dst`.
    pub(super) async fn sling(
        &self,
        sling: &Path,
        source: &str,
        dst: &str,
        table: SourceTable,
    ) -> anyhow::Result<Row> {
        let src_db = format!("{}_src", self.prefix);
        let rows = table.rows(&self.options);
        let (name, src_url, stream) = match source {
            "pg" => (
                format!("sling-pg{}", table.suffix()),
                format!("{}?sslmode=disable", self.pg_url(&src_db)),
                format!("public.{}", table.name),
            ),
            _ => (
                format!("sling-mariadb{}", table.suffix()),
                format!("mysql://root@{}:{}/{src_db}", self.my_host, self.my_port),
                format!("{src_db}.{}", table.name),
            ),
        };
        let describe = table.describe(&self.options);
        let copy = format!("residents_{}", name.replace('-', "_"));
        let home = self.work.join("sling-home");
        std::fs::create_dir_all(&home)?;
        let mut cmd = Command::new(sling);
        cmd.args(["run", "--src-conn", "BENCH_SRC", "--src-stream", &stream])
            .args(["--tgt-conn", "BENCH_DST", "--tgt-object"])
            .arg(format!("public.{copy}"))
            .args(["--mode", "full-refresh"])
            .env("BENCH_SRC", &src_url)
            .env("BENCH_DST", format!("{}?sslmode=disable", self.pg_url(dst)))
            .env("SLING_HOME_DIR", &home)
            .env("SLING_DISABLE_TELEMETRY", "true")
            .env("SLING_LOADED_AT_COLUMN", "false")
            .stdout(Stdio::null());
        let log = self.work.join(format!("{name}.log"));
        let child = process::spawn("sling", cmd, Some(&log))?;
        let usage = child
            .wait_at_most(limit(rows))
            .await
            .with_context(|| format!("see {}", log.display()))?;
        let n = self
            .count(dst, &format!("SELECT count(*) FROM {copy}"))
            .await?;
        if n as u64 != rows {
            bail!("sling copied {n} rows, not {rows}");
        }
        self.pg(dst)
            .await?
            .batch_execute(&format!("DROP TABLE {copy}"))
            .await?;
        let what = if source == "pg" {
            format!("sling PostgreSQL → PostgreSQL, full refresh{describe}")
        } else {
            format!("sling MariaDB → PostgreSQL, full refresh{describe}")
        };
        Ok(Row::new(&name, &what, rows, usage.wall).cost("sling", usage))
    }
}
