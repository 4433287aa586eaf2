//! The benchmark's databases: PostgreSQL and MariaDB, created with the run's prefix, loaded
//! with the generated rows, and dropped at the end.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};
use tokio_postgres::{Client, NoTls};

use super::table::{self, SourceTable};
use super::{Bench, Options};
use crate::data;

/// The statements that make `table` in PostgreSQL once `residents` holds the rows: a copy
/// (the first `--scale-rows` of a scaling table, in key order) keyed by `id_card`, and the
/// cursor index where the table has one.
fn pg_copy_ddl(table: SourceTable, options: &Options) -> String {
    let name = table.name;
    let mut sql = String::new();
    if table != table::INDEXED {
        let limit = if table.scale {
            format!(" ORDER BY id_card LIMIT {}", table.rows(options))
        } else {
            String::new()
        };
        sql.push_str(&format!(
            "CREATE TABLE {name} AS SELECT * FROM residents{limit};
             ALTER TABLE {name} ADD PRIMARY KEY (id_card);"
        ));
    }
    if table.cursor_index {
        sql.push_str(&format!(
            "CREATE INDEX {name}_cursor ON {name} (updated_at, id_card);"
        ));
    }
    sql
}

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

    /// Streams the generated rows from `tsv` into `residents` of `db` (`COPY`, 1 MiB at a
    /// time), then makes the other `tables` from it inside the server and indexes each.
    pub(super) async fn load_pg(
        &self,
        db: &str,
        tsv: &Path,
        tables: &[SourceTable],
    ) -> anyhow::Result<()> {
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
        for table in tables {
            client
                .batch_execute(&pg_copy_ddl(*table, &self.options))
                .await?;
        }
        for table in tables {
            client
                .batch_execute(&format!("VACUUM ANALYZE {}", table.name))
                .await?;
        }
        client.batch_execute("CHECKPOINT").await?;
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

    /// Loads `tsv` into `residents` (`LOAD DATA LOCAL INFILE`, streamed by the client), then
    /// fills the other `tables` from it inside the server.
    pub(super) fn load_mariadb(&self, tsv: &Path, tables: &[SourceTable]) -> anyhow::Result<()> {
        let db = format!("{}_src", self.prefix);
        let mut sql = format!(
            "{}; LOAD DATA LOCAL INFILE '{}' INTO TABLE residents CHARACTER SET utf8mb4;",
            data::mysql_ddl(table::INDEXED.name, true),
            tsv.display()
        );
        for t in tables.iter().filter(|t| **t != table::INDEXED) {
            let limit = if t.scale {
                format!(" LIMIT {}", t.rows(&self.options))
            } else {
                String::new()
            };
            sql.push_str(&format!(
                " {}; INSERT INTO {} SELECT * FROM residents ORDER BY id_card{limit};",
                data::mysql_ddl(t.name, t.cursor_index),
                t.name
            ));
        }
        for t in tables {
            sql.push_str(&format!(" ANALYZE TABLE {};", t.name));
        }
        self.mariadb_exec(Some(&db), &sql)
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
