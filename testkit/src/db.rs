//! Source databases: a fresh PostgreSQL or MariaDB database per test.
//!
//! The servers come from `EXCHANGE_TEST_PG_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`) and `EXCHANGE_TEST_MYSQL_URL` (default
//! `mysql://root@127.0.0.1:3306/test`): accounts that may create databases. Each test creates
//! its own database `ex_<unique>` and drops it when the fixture is dropped (also when the test
//! fails). A fresh database per test matters beyond tidiness: the agent's late-commit
//! protection looks at open transactions, per database on PostgreSQL, so another test's
//! transaction never holds this test's agent back (on MariaDB it is server-wide: MariaDB tests
//! loop `sync` until done, with a deadline).
//!
//! An unreachable server fails the test with instructions; a test never skips.

use mysql_async::prelude::Queryable;
use tokio_postgres::{Client, NoTls};

/// The PostgreSQL server the tests use (an account that may create databases).
pub fn pg_url() -> String {
    std::env::var("EXCHANGE_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// The MariaDB/MySQL server the tests use (an account that may create databases).
pub fn mysql_url() -> String {
    std::env::var("EXCHANGE_TEST_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".to_owned())
}

/// `url` with its database (the path) replaced by `db`, keeping any query string.
pub fn with_database(url: &str, db: &str) -> String {
    let (scheme, rest) = url
        .split_once("://")
        .unwrap_or_else(|| panic!("`{url}` is not a URL"));
    let (authority, tail) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => match rest.find('?') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        },
    };
    let query = tail.find('?').map(|i| &tail[i..]).unwrap_or("");
    format!("{scheme}://{authority}/{db}{query}")
}

/// Runs `f` to completion on a runtime of its own, in another thread (for cleanup in `Drop`,
/// which may run inside or outside the test's runtime).
fn cleanup<F>(f: impl FnOnce() -> F + Send + 'static)
where
    F: std::future::Future<Output = ()>,
{
    let _ = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("cleanup runtime");
        rt.block_on(f());
    })
    .join();
}

/// Connects to PostgreSQL, failing the test with instructions when the server is unreachable.
pub async fn pg_connect(url: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| {
            let e = exchange_protocol::cause::chain(&e);
            panic!(
                "PostgreSQL at {url} is unreachable ({e}).\n\
             These tests need a real server and never skip. Start the local one \
             (`service postgresql start`, or `pg_ctlcluster 15 main start`) with trust \
             authentication for 127.0.0.1 and a database `test` (`createdb -U postgres test`), \
             or `docker run -d -p 5432:5432 -e POSTGRES_HOST_AUTH_METHOD=trust -e POSTGRES_DB=test \
             postgres:15`, or point EXCHANGE_TEST_PG_URL at a server where the account may \
             create databases. The README's test command starts (and installs) both servers."
            )
        });
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// A fresh PostgreSQL database, dropped (`WITH (FORCE)`) when this is dropped.
pub struct PgDb {
    /// The database name.
    pub name: String,
    /// URL of the database, for the agent's `[[sources]]` and for more sessions.
    pub url: String,
    /// A session on the database, for setting up tables and reading the source's rows.
    pub client: Client,
}

impl PgDb {
    /// The rows of a table `events (id bigint, note text, updated_at timestamptz)` as the hub
    /// should hold them (the tests' common incremental table).
    pub async fn events(&self) -> crate::rows::Rows {
        use crate::rows;
        self.client
            .query("SELECT id, note, updated_at FROM events", &[])
            .await
            .expect("read events")
            .iter()
            .map(|r| {
                let id: i64 = r.get(0);
                (
                    id.to_string(),
                    rows::fields([
                        ("id", serde_json::json!(id)),
                        ("note", serde_json::json!(r.get::<_, String>(1))),
                        (
                            "updated_at",
                            rows::timestamptz(r.get::<_, chrono::DateTime<chrono::Utc>>(2)),
                        ),
                    ]),
                )
            })
            .collect()
    }

    /// Creates the database.
    pub async fn create() -> PgDb {
        let admin = pg_connect(&pg_url()).await;
        let name = crate::unique("ex");
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap_or_else(|e| panic!("cannot create database {name} on {}: {e}", pg_url()));
        let url = with_database(&pg_url(), &name);
        let client = pg_connect(&url).await;
        PgDb { name, url, client }
    }

    /// Another session on the database (e.g. for a transaction left open).
    pub async fn session(&self) -> Client {
        pg_connect(&self.url).await
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        cleanup(move || async move {
            if let Ok((client, connection)) = tokio_postgres::connect(&pg_url(), NoTls).await {
                tokio::spawn(connection);
                let _ = client.batch_execute(&sql).await;
            }
        });
    }
}

/// Connects to MariaDB/MySQL, failing the test with instructions when the server is
/// unreachable.
pub async fn mysql_connect(url: &str) -> mysql_async::Conn {
    let opts =
        mysql_async::Opts::from_url(url).unwrap_or_else(|e| panic!("bad MySQL URL {url}: {e}"));
    let mut conn = mysql_async::Conn::new(opts).await.unwrap_or_else(|e| {
        panic!(
            "MariaDB/MySQL at {url} is unreachable ({e}).\n\
             These tests need a real server and never skip. Start the local one \
             (`service mariadb start`) with a passwordless root for 127.0.0.1 and a database \
             `test` (`mysql -uroot -e 'CREATE DATABASE test'`), or `docker run -d -p 3306:3306 \
             -e MARIADB_ALLOW_EMPTY_ROOT_PASSWORD=1 -e MARIADB_DATABASE=test mariadb:10.11`, or \
             point EXCHANGE_TEST_MYSQL_URL at a server where the account may create databases. \
             The README's test command starts (and installs) both servers."
        )
    });
    conn.query_drop("SET NAMES utf8mb4")
        .await
        .expect("SET NAMES utf8mb4");
    conn
}

/// A fresh MariaDB/MySQL database (character set utf8mb4), dropped when this is dropped.
pub struct MyDb {
    /// The database name.
    pub name: String,
    /// URL of the database, for the agent's `[[sources]]` and for more sessions.
    pub url: String,
}

impl MyDb {
    /// Creates the database.
    pub async fn create() -> MyDb {
        let mut admin = mysql_connect(&mysql_url()).await;
        let name = crate::unique("ex");
        admin
            .query_drop(format!("CREATE DATABASE {name} CHARACTER SET utf8mb4"))
            .await
            .unwrap_or_else(|e| panic!("cannot create database {name} on {}: {e}", mysql_url()));
        let _ = admin.disconnect().await;
        MyDb {
            url: with_database(&mysql_url(), &name),
            name,
        }
    }

    /// A session on the database (`SET NAMES utf8mb4` done).
    pub async fn conn(&self) -> mysql_async::Conn {
        mysql_connect(&self.url).await
    }
}

impl Drop for MyDb {
    fn drop(&mut self) {
        let sql = format!("DROP DATABASE IF EXISTS {}", self.name);
        cleanup(move || async move {
            if let Ok(opts) = mysql_async::Opts::from_url(&mysql_url())
                && let Ok(mut conn) = mysql_async::Conn::new(opts).await
            {
                let _ = conn.query_drop(sql).await;
                let _ = conn.disconnect().await;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_database_replaces_the_path_and_keeps_the_query() {
        for (url, expected) in [
            (
                "postgres://postgres@127.0.0.1:5432/test",
                "postgres://postgres@127.0.0.1:5432/ex_1",
            ),
            (
                "mysql://root@127.0.0.1:3306/test?ssl-mode=disabled",
                "mysql://root@127.0.0.1:3306/ex_1?ssl-mode=disabled",
            ),
            ("postgres://h:5432", "postgres://h:5432/ex_1"),
            ("postgres://h:5432?x=1", "postgres://h:5432/ex_1?x=1"),
        ] {
            assert_eq!(with_database(url, "ex_1"), expected, "{url}");
        }
    }
}
