//! The baselines: the databases' own tools moving the rows, reading alone or piped into a
//! keyed table.

use anyhow::bail;

use super::table::SourceTable;
use super::{Bench, LIMIT, limit};
use crate::data;
use crate::process;
use crate::report::Row;

impl Bench {
    pub(super) async fn pg_copy_devnull(&self, src: &str, columns: &str) -> anyhow::Result<Row> {
        let script = format!(
            "psql -X -q -d '{}' -c \"COPY (SELECT {columns} FROM residents) TO STDOUT\" > /dev/null",
            self.pg_url(src)
        );
        let usage = process::shell("psql", &script, LIMIT).await?;
        Ok(Row::new(
            "pg-copy-devnull",
            "COPY (SELECT …) TO STDOUT > /dev/null",
            self.options.rows,
            usage.wall,
        )
        .cost("psql", usage))
    }

    /// `table` piped into a keyed table of `dst` (neither end uses the cursor index: the
    /// `SELECT` reads the table in one pass).
    pub(super) async fn pg_copy_pipe(
        &self,
        src: &str,
        dst: &str,
        columns: &str,
        table: SourceTable,
    ) -> anyhow::Result<Row> {
        let rows = table.rows(&self.options);
        self.pg(dst)
            .await?
            .batch_execute(&format!(
                "DROP TABLE IF EXISTS residents_copy; {}",
                data::pg_ddl("residents_copy")
            ))
            .await?;
        let script = format!(
            "set -e; psql -X -q -v ON_ERROR_STOP=1 -d '{}' -c \"COPY (SELECT {columns} FROM {}) TO STDOUT\" \
             | psql -X -q -v ON_ERROR_STOP=1 -d '{}' -c \"COPY residents_copy FROM STDIN\"",
            self.pg_url(src),
            table.name,
            self.pg_url(dst)
        );
        let usage = process::shell("psql+psql", &script, limit(rows)).await?;
        let n = self
            .count(dst, "SELECT count(*) FROM residents_copy")
            .await?;
        if n as u64 != rows {
            bail!("the keyed table holds {n} rows, not {rows}");
        }
        self.pg(dst)
            .await?
            .batch_execute("DROP TABLE residents_copy")
            .await?;
        Ok(Row::new(
            &format!("pg-copy-pipe{}", table.suffix()),
            &format!(
                "COPY … TO STDOUT | COPY … FROM STDIN (keyed table){}",
                table.describe(&self.options)
            ),
            rows,
            usage.wall,
        )
        .cost("psql+psql", usage))
    }

    pub(super) async fn mariadb_select(
        &self,
        columns: &str,
        table: SourceTable,
    ) -> anyhow::Result<Row> {
        let db = format!("{}_src", self.prefix);
        let rows = table.rows(&self.options);
        let script = format!(
            "mariadb -h {} -P {} -u root --quick {db} -e 'SELECT {columns} FROM {}' > /dev/null",
            self.my_host, self.my_port, table.name
        );
        let usage = process::shell("mariadb", &script, limit(rows)).await?;
        Ok(Row::new(
            &format!("mariadb-select{}", table.suffix()),
            &format!(
                "mariadb --quick -e 'SELECT …' > /dev/null{}",
                table.describe(&self.options)
            ),
            rows,
            usage.wall,
        )
        .cost("mariadb", usage))
    }
}
