//! MySQL and MariaDB sources, read with `mysql_async` over the binary protocol.
//!
//! Modules by concern:
//! - `session.rs`: the connection URL (with the connector's own `time_zone` parameter), pool,
//!   TLS, session setup, and error messages that never hold a row's values;
//! - `plan.rs`: default deny (every selected column resolved before a statement runs), and
//!   values bound with their column's type; the SQL text itself is the shared
//!   [`Dialect::MYSQL`] (`dialect.rs`);
//! - `horizon.rs`: late-commit protection: the clock, open transactions, replicas;
//! - `order.rs`: whether an index supplies the cursor order (`EXPLAIN FORMAT=JSON` of the
//!   page statement), and the index to create when none does;
//! - `convert.rs`: the type mapping from binary-protocol values to [`Value`].
//!
//! A `query` resource is read inside `START TRANSACTION READ ONLY` (after the horizon
//! statement), so a query that tries to write fails.
//!
//! [`Connector::scan`] runs the page query without `LIMIT` (after the horizon statement, as a
//! page) and reads its rows one by one as the server sends them (`exec_iter`), converted into
//! chunks: while a chunk waits for the reader no more rows are read, so memory stays bounded
//! and the server waits, up to its `net_write_timeout`, after which the statement fails and
//! the next pull goes on from the reader's stored cursor.

mod convert;
mod horizon;
mod order;
mod plan;
mod session;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{NaiveDate, NaiveDateTime, TimeDelta};
use mysql_async::consts::{ColumnFlags, ColumnType};
use mysql_async::prelude::Queryable;
use mysql_async::{
    Column, Conn, DriverError, Opts, OptsBuilder, Params, Pool, PoolConstraints, Row, ServerError,
    TxOpts,
};

use crate::dialect::{self, BindAs, ColumnMeta, Dialect, HorizonCompare, LookupKeys, PageQuery};
use crate::{
    Bound, Chunks, ColumnInfo, Connector, ConnectorError, ConvertError, HorizonInfo, NullRows,
    OrderPlan, OrderRequest, Page, PageRequest, Probe, Relation, Row as SourceRow, ScanEnd,
    ScanRequest, Selection, SourceSpec, Value,
};

use convert::*;
use horizon::*;
use plan::*;
use session::*;

/// The SQL text of this connector.
const SQL: Dialect = Dialect::MYSQL;

/// Reads a MySQL or MariaDB source.
pub struct MysqlConnector {
    /// The configured source name, for errors and logs.
    name: String,
    /// `host:port/db`, for errors (never the password).
    address: String,
    /// `host:port`, the key of this server's `innodb_trx` reads.
    server: String,
    /// The connection pool; lazy, connects on first use.
    pool: Pool,
    /// The last view of open transactions and when it was taken (see [`VIEW_REUSE`]).
    trx_view: tokio::sync::Mutex<Option<(Instant, TrxView)>>,
    /// The zone `DATETIME` cursor columns are written in (the URL's `time_zone`); `None`: the
    /// server's default session zone, `@@global.time_zone`.
    datetime_zone: Option<String>,
    /// Horizon margin when the server turns out to be a replica.
    replica_lag: Duration,
}

impl MysqlConnector {
    /// The statement of a page (`limit`) or a scan (none) and its parameters, with the horizon
    /// read first, in its own statement, before the read's snapshot is taken.
    async fn read_sql(
        &self,
        conn: &mut Conn,
        selection: &Selection,
        after: Option<&[Value]>,
        bound: Bound,
        limit: Option<mysql_async::Value>,
    ) -> Result<(String, Vec<mysql_async::Value>, crate::Horizon), ConnectorError> {
        let positions = dialect::cursor_positions(selection, after).map_err(|e| self.config(e))?;
        let resolved = self.resolve(conn, selection).await?;
        let after = match after {
            Some(after) => Some(
                after
                    .iter()
                    .zip(&positions)
                    .map(|(value, &i)| Some((bind_as(&resolved.columns[i]), cursor_param(value)?)))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| self.config("a stored cursor value is out of range".into()))?,
            ),
            None => None,
        };
        let mut horizon = crate::Horizon::unbounded();
        let mut value = None;
        if let Bound::Horizon { safety_lag } = bound
            && let Some(kind) = Temporal::of(&resolved.columns[positions[0]])
        {
            let (at, bounded) = self.horizon(conn, kind, safety_lag).await?;
            value = Some((HorizonCompare::Instant, at));
            horizon = bounded;
        }
        let (sql, params) = SQL.page_query(PageQuery {
            select_list: &SQL.column_refs(&selection.columns),
            from: &SQL.relation_sql(&selection.relation),
            cursor: &selection.cursor,
            after,
            horizon: value,
            limit,
        });
        Ok((sql, params, horizon))
    }
}

#[async_trait]
impl Connector for MysqlConnector {
    fn name(&self) -> &str {
        &self.name
    }

    async fn clock(&self) -> Result<chrono::DateTime<chrono::Utc>, ConnectorError> {
        let mut conn = self.conn().await?;
        let row = self
            .first_row(&mut conn, "SELECT UTC_TIMESTAMP(6)", ())
            .await?;
        datetime_at(&row, 0)
            .map(|t| t.and_utc())
            .ok_or_else(|| self.statement("UTC_TIMESTAMP() returned no timestamp".into()))
    }

    async fn probe(&self) -> Result<Probe, ConnectorError> {
        let mut conn = self.conn().await?;
        let row = self
            .first_row(&mut conn, "SELECT VERSION(), CURRENT_USER()", ())
            .await?;
        let version = text_at(&row, 0).unwrap_or_default();
        let account = quote_account(&text_at(&row, 1).unwrap_or_default());
        let product = if version.contains("MariaDB") {
            "MariaDB"
        } else {
            "MySQL"
        };
        let server = format!("{product} {version}");

        let mut missing = Vec::new();
        innodb_trx_slot(&self.server).await;
        let sees_open_transactions = match conn
            .exec_drop("SELECT COUNT(*) FROM information_schema.innodb_trx", ())
            .await
        {
            Ok(()) => true,
            Err(mysql_async::Error::Server(se)) if se.code == ER_SPECIFIC_ACCESS_DENIED => {
                missing.push(format!(
                    "GRANT PROCESS ON *.* TO {account}; -- lets the agent see open \
                     transactions (information_schema.innodb_trx), so rows of transactions \
                     that commit late are not skipped"
                ));
                false
            }
            Err(e) => return Err(self.error(&e)),
        };
        let replica = match self.replica_status(&mut conn).await? {
            ReplicaStatus::Replica(what) => Some(what),
            ReplicaStatus::Primary => None,
            ReplicaStatus::Hidden { grant, read_only } => {
                missing.push(format!(
                    "{grant} TO {account}; -- lets the agent see whether the server is a \
                     replica (a replica cannot see the primary's open transactions){}",
                    if read_only {
                        ""
                    } else {
                        "; until then a writable server is taken to be a primary"
                    }
                ));
                read_only.then(read_only_replica)
            }
        };
        Ok(Probe {
            server,
            sees_open_transactions,
            missing_privilege: (!missing.is_empty()).then(|| missing.join("\n")),
            replica,
        })
    }

    async fn describe(&self, selection: &Selection) -> Result<Vec<ColumnInfo>, ConnectorError> {
        let mut conn = self.conn().await?;
        let resolved = self.resolve(&mut conn, selection).await?;
        Ok(selection
            .columns
            .iter()
            .zip(&resolved.columns)
            .zip(&resolved.nullable)
            .map(|((name, column), nullable)| ColumnInfo {
                name: name.clone(),
                source_type: source_type(column),
                nullable: *nullable,
            })
            .collect())
    }

    async fn read_page(&self, request: &PageRequest<'_>) -> Result<Page, ConnectorError> {
        let selection = request.selection;
        let mut conn = self.conn().await?;
        let limit = Some(mysql_async::Value::UInt(request.limit as u64));
        let (sql, params, horizon) = self
            .read_sql(&mut conn, selection, request.after, request.bound, limit)
            .await?;
        let rows = self.fetch(&mut conn, selection, sql, params).await?;
        Ok(Page {
            columns: selection.columns.clone().into(),
            rows,
            horizon,
        })
    }

    async fn scan(
        &self,
        request: &ScanRequest<'_>,
        chunks: &Chunks,
    ) -> Result<ScanEnd, ConnectorError> {
        let selection = request.selection;
        let mut conn = self.conn().await?;
        let (sql, params, horizon) = self
            .read_sql(&mut conn, selection, request.after, request.bound, None)
            .await?;
        let streamed = match selection.relation {
            Relation::Table(_) => {
                self.stream_rows(&mut conn, selection, sql, params, request.chunk, chunks)
                    .await?
            }
            Relation::Query(_) => {
                let mut tx = self.read_only(&mut conn).await?;
                let sent = self
                    .stream_rows(&mut tx, selection, sql, params, request.chunk, chunks)
                    .await?;
                tx.rollback().await.map_err(|e| self.error(&e))?;
                sent
            }
        };
        Ok(ScanEnd {
            horizon,
            rows: streamed.sent,
            stopped: streamed.stopped,
            time: streamed.time,
        })
    }

    async fn plan_order(&self, request: &OrderRequest<'_>) -> Result<OrderPlan, ConnectorError> {
        self.order(request).await
    }

    async fn null_cursor_rows(
        &self,
        selection: &Selection,
        limit: usize,
    ) -> Result<NullRows, ConnectorError> {
        dialect::cursor_positions(selection, None).map_err(|e| self.config(e))?;
        let mut conn = self.conn().await?;
        let resolved = self.resolve(&mut conn, selection).await?;
        let select_list = SQL.column_refs(&selection.columns);
        let from = SQL.relation_sql(&selection.relation);
        let Some(queries) =
            SQL.null_cursor_queries(selection, &resolved.nullable, &select_list, &from)
        else {
            return Ok(NullRows {
                total: 0,
                rows: Vec::new(),
            });
        };
        // Both statements read one snapshot, so the count and the rows agree.
        let mut tx = self.read_only(&mut conn).await?;
        let total: Option<u64> = tx
            .exec_first(queries.count, ())
            .await
            .map_err(|e| self.error(&e))?;
        let rows = self
            .exec_checked(
                &mut tx,
                selection,
                queries.rows,
                vec![mysql_async::Value::UInt(limit as u64)],
            )
            .await?;
        tx.rollback().await.map_err(|e| self.error(&e))?;
        Ok(NullRows {
            total: total.unwrap_or(0),
            rows: self.convert_rows(selection, rows)?,
        })
    }

    async fn lookup(&self, selection: &Selection, key: &str, keys: &[Value]) -> crate::Found {
        let Some(index) = selection.columns.iter().position(|c| c == key) else {
            return Err(self.config(format!(
                "key column `{key}` is not among the selected columns"
            )));
        };
        let mut conn = self.conn().await?;
        let resolved = self.resolve(&mut conn, selection).await?;
        let column = &resolved.columns[index];
        let params = keys
            .iter()
            .map(|k| typed_param(column, k))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| {
                self.config(format!(
                    "a key value does not fit the type of key column `{key}` ({})",
                    source_type(column)
                ))
            })?;
        let select_list = SQL.column_refs(&selection.columns);
        let from = SQL.relation_sql(&selection.relation);
        let mut rows = Vec::new();
        for chunk in params.chunks(LOOKUP_CHUNK) {
            let keys = LookupKeys::List {
                count: chunk.len(),
                how: bind_as(column),
            };
            let sql = SQL.lookup_sql(&select_list, &from, key, keys);
            rows.extend(
                self.fetch(&mut conn, selection, sql, chunk.to_vec())
                    .await?,
            );
        }
        Ok(rows)
    }
}
