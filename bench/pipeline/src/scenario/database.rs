//! The benchmark's databases: PostgreSQL and MariaDB, created with the run's prefix, loaded
//! with the generated rows, and dropped at the end.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};
use tokio_postgres::{Client, NoTls};

use super::Bench;
use crate::data;

impl Bench {
    pub(super) fn pg_url(&self, db: &str) -> String {
        format!("{}/{db}", self.options.pg.trim_end_matches('/'))
    }

    pub(super) async fn pg(&self, db: &str) -> anyhow::Result<Client> {
        let url = self.pg_url(db);
        let (client, connection) = tokio_postgres::connect(&url, NoTls)
            .await
            .with_context(|| format!("cannot connect to {url}"))?;
        tokio::spawn(connection);
        Ok(client)
    }

    /// Creates the PostgreSQL database `<prefix>_<name>` (dropping a leftover first).
    pub(super) async fn create_pg(&mut self, name: &str) -> anyhow::Result<String> {
        let db = format!("{}_{name}", self.prefix);
        let admin = self.pg("postgres").await?;
        for sql in [
            format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"),
            format!("CREATE DATABASE {db}"),
        ] {
            admin
                .batch_execute(&sql)
                .await
                .with_context(|| format!("cannot create database {db}"))?;
        }
        if !self.pg_dbs.contains(&db) {
            self.pg_dbs.push(db.clone());
        }
        Ok(db)
    }

    pub(super) async fn load_pg(&self, db: &str, tsv: &Path) -> anyhow::Result<()> {
        use futures_util::SinkExt;
        let client = self.pg(db).await?;
        client
            .batch_execute(&format!(
                "SET TIME ZONE 'UTC'; {}",
                data::pg_ddl("residents")
            ))
            .await?;
        let sink = client
            .copy_in("COPY residents FROM STDIN")
            .await
            .context("COPY into the source table")?;
        let mut sink = std::pin::pin!(sink);
        let mut file = tokio::io::BufReader::new(tokio::fs::File::open(tsv).await?);
        loop {
            use tokio::io::AsyncReadExt;
            let mut buf = vec![0u8; 1 << 20];
            let n = file.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            buf.truncate(n);
            sink.send(hyper::body::Bytes::from(buf)).await?;
        }
        sink.as_mut().finish().await?;
        for sql in [
            "CREATE INDEX residents_cursor ON residents (updated_at, id_card)",
            "VACUUM ANALYZE residents",
            "CHECKPOINT",
        ] {
            client.batch_execute(sql).await?;
        }
        Ok(())
    }

    pub(super) fn mariadb(&self) -> Command {
        let mut cmd = Command::new("mariadb");
        cmd.args([
            "-h",
            &self.my_host,
            "-P",
            &self.my_port,
            "-u",
            "root",
            "--default-character-set=utf8mb4",
        ]);
        cmd
    }

    pub(super) fn mariadb_exec(&self, db: Option<&str>, sql: &str) -> anyhow::Result<()> {
        let mut cmd = self.mariadb();
        cmd.arg("--local-infile=1");
        if let Some(db) = db {
            cmd.arg(db);
        }
        let out = cmd.arg("-e").arg(sql).output().context("run mariadb")?;
        if !out.status.success() {
            bail!(
                "mariadb failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    pub(super) fn create_mariadb(&mut self, name: &str) -> anyhow::Result<String> {
        let db = format!("{}_{name}", self.prefix);
        self.mariadb_exec(
            None,
            &format!("DROP DATABASE IF EXISTS {db}; CREATE DATABASE {db} CHARACTER SET utf8mb4"),
        )?;
        self.my_dbs.push(db.clone());
        Ok(db)
    }

    pub(super) fn load_mariadb(&self, tsv: &Path) -> anyhow::Result<()> {
        let db = format!("{}_src", self.prefix);
        self.mariadb_exec(
            Some(&db),
            &format!(
                "{}; LOAD DATA LOCAL INFILE '{}' INTO TABLE residents CHARACTER SET utf8mb4; ANALYZE TABLE residents",
                data::mysql_ddl("residents"),
                tsv.display()
            ),
        )
    }

    pub(super) async fn drop_databases(&mut self) {
        if let Ok(admin) = self.pg("postgres").await {
            for db in self.pg_dbs.drain(..) {
                if let Err(e) = admin
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
                    .await
                {
                    eprintln!("cannot drop database {db}: {e}");
                }
            }
        }
        for db in std::mem::take(&mut self.my_dbs) {
            if let Err(e) = self.mariadb_exec(None, &format!("DROP DATABASE IF EXISTS {db}")) {
                eprintln!("cannot drop database {db}: {e:#}");
            }
        }
    }

    pub(super) async fn count(&self, db: &str, sql: &str) -> anyhow::Result<i64> {
        Ok(self.pg(db).await?.query_one(sql, &[]).await?.get(0))
    }
}
