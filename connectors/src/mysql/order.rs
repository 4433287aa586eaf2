//! The cursor order of a steady-state pull as the optimizer sees it ([`Connector::plan_order`]).
//!
//! The page statement is the one [`MysqlConnector::read_sql`] builds for a read (the same text,
//! the same typed parameters, the horizon read first), after the last row in cursor order, with
//! `LIMIT` the batch size; it is prepared as `EXPLAIN FORMAT=JSON <statement>` and run with its
//! parameters bound (a `query` resource's inside a read-only transaction). The cursor at the
//! last row makes the leading range (`src.c1 >= ?`) as narrow as a steady-state pull's, so the
//! optimizer takes an index on the cursor columns whenever there is one, whatever the size of
//! the table.
//!
//! The plan's JSON differs between the servers, and all three shapes are read:
//! - MariaDB: a sort is a `"filesort"` object (under `"read_sorted_file"` or the query block);
//! - MySQL (`explain_json_format_version = 1`, the default): `"using_filesort": true` in an
//!   `"ordering_operation"`;
//! - MySQL 8.3+ with `explain_json_format_version = 2`: a node with `"access_type": "sort"`.
//!
//! The index is the `"key"` (`"index_name"` in version 2) of the first table read. A plan
//! without any table (MariaDB's "Impossible WHERE noticed after reading const tables": rows
//! stamped after the horizon) tells nothing about the order. A plan quotes the bound values
//! (`attached_condition`): only these keys are read from it, and it is never logged or shown.
//!
//! For a base table whose order is not supplied, the statement a DBA runs is
//! ``CREATE INDEX `exchange_<table>_cursor` ON `<database>`.`<table>` (`c1`, `c2`);``, every
//! identifier quoted as `SHOW CREATE TABLE` quotes it; a view's or a query's plan that sorts
//! is reported as unknown.

use super::*;
use crate::UnknownOrder;

/// The kind and the database of a table selection.
const RELATION_SQL: &str = "SELECT TABLE_TYPE, TABLE_SCHEMA, TABLE_NAME \
     FROM information_schema.tables \
     WHERE TABLE_SCHEMA = COALESCE(?, DATABASE()) AND TABLE_NAME = ?";

/// What the plan says about the order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Nodes {
    /// Tables are read and nothing is sorted: the order comes from an index (the first one
    /// named, if any).
    Ordered(Option<String>),
    /// Something is sorted.
    Sorted,
    /// No table is read at all.
    Nothing,
}

impl MysqlConnector {
    /// [`Connector::plan_order`].
    pub(super) async fn order(
        &self,
        request: &OrderRequest<'_>,
    ) -> Result<OrderPlan, ConnectorError> {
        let selection = request.selection;
        let positions = dialect::cursor_positions(selection, None).map_err(|e| self.config(e))?;
        let mut conn = self.conn().await?;
        self.resolve(&mut conn, selection).await?;
        let last = SQL.last_row_sql(
            &SQL.column_refs(&selection.columns),
            &SQL.relation_sql(&selection.relation),
            &selection.cursor,
        );
        let rows = self.fetch(&mut conn, selection, last, Vec::new()).await?;
        // A cursor that cannot be converted (or an empty relation): the plan of a first read.
        let after: Option<Vec<Value>> = rows.first().and_then(|row| {
            positions
                .iter()
                .map(|&i| row.values[i].clone().ok())
                .collect()
        });
        let limit = Some(mysql_async::Value::UInt(request.limit as u64));
        let (sql, params, _) = self
            .read_sql(&mut conn, selection, after.as_deref(), request.bound, limit)
            .await?;
        let explain = format!("EXPLAIN FORMAT=JSON {sql}");
        let text: Option<String> = match selection.relation {
            Relation::Table(_) => conn
                .exec_first(explain, Params::Positional(params))
                .await
                .map_err(|e| self.error(&e))?,
            Relation::Query(_) => {
                let mut tx = self.read_only(&mut conn).await?;
                let text = tx
                    .exec_first(explain, Params::Positional(params))
                    .await
                    .map_err(|e| self.error(&e))?;
                tx.rollback().await.map_err(|e| self.error(&e))?;
                text
            }
        };
        let plan: serde_json::Value = text
            .as_deref()
            .and_then(|t| serde_json::from_str(t).ok())
            .ok_or_else(|| self.statement("EXPLAIN FORMAT=JSON returned no plan".into()))?;
        Ok(match (nodes(&plan), &selection.relation) {
            (Nodes::Ordered(index), _) => OrderPlan::Indexed { index },
            (Nodes::Nothing, _) => OrderPlan::Unknown {
                why: UnknownOrder::NothingToRead,
            },
            (Nodes::Sorted, Relation::Table(table)) => {
                self.sorted_table(&mut conn, table, &selection.cursor)
                    .await?
            }
            (Nodes::Sorted, Relation::Query(_)) => OrderPlan::Unknown {
                why: UnknownOrder::Query,
            },
        })
    }

    /// The plan of a table whose cursor order no index supplies: the index to create, or
    /// unknown for a view.
    async fn sorted_table(
        &self,
        conn: &mut Conn,
        table: &str,
        cursor: &[String],
    ) -> Result<OrderPlan, ConnectorError> {
        let (schema, name) = split_table(table).map_err(|e| self.config(e))?;
        let found: Option<(String, String, String)> = conn
            .exec_first(RELATION_SQL, (schema, name))
            .await
            .map_err(|e| self.error(&e))?;
        Ok(match found {
            Some((kind, schema, name)) if kind == "BASE TABLE" => {
                let columns: Vec<String> = cursor.iter().map(|c| SQL.quote_ident(c)).collect();
                OrderPlan::Sorted {
                    create_index: SQL.create_index_sql(
                        &SQL.quote_ident(&dialect::cursor_index_name(&name)),
                        &format!("{}.{}", SQL.quote_ident(&schema), SQL.quote_ident(&name)),
                        &columns,
                        false,
                    ),
                }
            }
            _ => OrderPlan::Unknown {
                why: UnknownOrder::View,
            },
        })
    }
}

/// Reads a plan (`EXPLAIN FORMAT=JSON`, any of the three shapes of the module documentation).
pub(super) fn nodes(plan: &serde_json::Value) -> Nodes {
    #[derive(Default)]
    struct Seen {
        sorted: bool,
        table: bool,
        index: Option<String>,
    }
    fn walk(value: &serde_json::Value, seen: &mut Seen) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, child) in map {
                    match (key.as_str(), child) {
                        ("filesort", _) => seen.sorted = true,
                        ("using_filesort", serde_json::Value::Bool(true)) => seen.sorted = true,
                        ("access_type", serde_json::Value::String(t)) if t == "sort" => {
                            seen.sorted = true;
                        }
                        ("table_name", _) => seen.table = true,
                        ("key" | "index_name", serde_json::Value::String(name))
                            if seen.index.is_none() =>
                        {
                            seen.index = Some(name.clone());
                        }
                        _ => {}
                    }
                    walk(child, seen);
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| walk(v, seen)),
            _ => {}
        }
    }
    let mut seen = Seen::default();
    walk(plan, &mut seen);
    match seen {
        Seen { sorted: true, .. } => Nodes::Sorted,
        Seen { table: false, .. } => Nodes::Nothing,
        Seen { index, .. } => Nodes::Ordered(index),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mariadb_and_both_mysql_shapes_of_a_sort_are_recognized() {
        let json = |text: &str| serde_json::from_str::<serde_json::Value>(text).unwrap();
        let cases = [
            // MariaDB 10.11, no index on the cursor columns.
            (
                r#"{"query_block": {"select_id": 1, "nested_loop": [{"read_sorted_file":
                   {"filesort": {"sort_key": "src.updated_at, src.`id`", "table":
                   {"table_name": "src", "access_type": "ALL", "possible_keys": ["PRIMARY"],
                   "rows": 2000}}}}]}}"#,
                Nodes::Sorted,
            ),
            // MariaDB 10.11, a range on the cursor index.
            (
                r#"{"query_block": {"select_id": 1, "nested_loop": [{"table":
                   {"table_name": "src", "access_type": "range", "possible_keys":
                   ["PRIMARY", "people_cursor"], "key": "people_cursor", "rows": 1}}]}}"#,
                Nodes::Ordered(Some("people_cursor".into())),
            ),
            // MariaDB: the range is empty (rows stamped after the horizon).
            (
                r#"{"query_block": {"select_id": 1, "table": {"message":
                   "Impossible WHERE noticed after reading const tables"}}}"#,
                Nodes::Nothing,
            ),
            // MySQL 8.0, version 1.
            (
                r#"{"query_block": {"select_id": 1, "cost_info": {"query_cost": "203.75"},
                   "ordering_operation": {"using_filesort": true, "table": {"table_name":
                   "src", "access_type": "ALL", "rows_examined_per_scan": 2000}}}}"#,
                Nodes::Sorted,
            ),
            (
                r#"{"query_block": {"select_id": 1, "ordering_operation": {"using_filesort":
                   false, "table": {"table_name": "src", "access_type": "range", "key":
                   "people_cursor", "used_key_parts": ["updated_at"]}}}}"#,
                Nodes::Ordered(Some("people_cursor".into())),
            ),
            // MySQL 8.3+, version 2.
            (
                r#"{"query": "/* select#1 */ select …", "operation": "Limit: 1000 row(s)",
                   "access_type": "limit", "inputs": [{"operation": "Sort: src.updated_at",
                   "access_type": "sort", "inputs": [{"operation": "Table scan on src",
                   "access_type": "table", "table_name": "src"}]}]}"#,
                Nodes::Sorted,
            ),
            (
                r#"{"operation": "Limit: 1000 row(s)", "access_type": "limit", "inputs":
                   [{"operation": "Index range scan on src using people_cursor",
                   "access_type": "index", "index_access_type": "index_range_scan",
                   "index_name": "people_cursor", "table_name": "src"}]}"#,
                Nodes::Ordered(Some("people_cursor".into())),
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(nodes(&json(text)), expected, "{text}");
        }
    }
}
