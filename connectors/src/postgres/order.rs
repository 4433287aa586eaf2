//! The cursor order of a steady-state pull as the planner sees it ([`Connector::plan_order`]).
//!
//! The page statement is the one [`PostgresConnector::page_statement`] builds for a read (the
//! same text, the same typed parameters), after the last row in cursor order, with `LIMIT`
//! the batch size; it is given to `EXPLAIN (FORMAT JSON)` with its parameters bound, in a
//! read-only transaction with `SET LOCAL enable_sort = off`. That setting asks the question
//! the warning is about — can an index supply the order? — rather than which plan is cheapest
//! today: on a small table a sequential scan and a sort of a few pages costs less than an
//! index scan, and the planner would pick it although the index is there (it would pick the
//! index once the table grows). With sorting priced out, a `Sort` node is left only where no
//! index can give the order. An `Incremental Sort` (an index on the leading cursor columns,
//! the rest sorted among rows that share them) counts as supplied: a pull still reads only
//! the rows after its cursor.
//!
//! A plan quotes the bound values (`Index Cond`, `Filter`): only node types and index names
//! are read from it, and it is never logged or shown.
//!
//! For a table (also partitioned, or a materialized view) whose order is not supplied, the
//! statement a DBA runs is `CREATE INDEX CONCURRENTLY exchange_<table>_cursor ON
//! <schema>.<table> (<cursor columns>);` (not `CONCURRENTLY` on a partitioned table, which
//! PostgreSQL refuses), every identifier quoted as `quote_ident` quotes it: only where it
//! must be. A view's, a foreign table's or a query's plan that sorts is reported as unknown:
//! the index would belong to the tables under it.

use super::*;
use crate::UnknownOrder;

/// The relation of a table selection: its kind, and its names quoted by the server.
const RELATION_SQL: &str = "SELECT c.relkind::text, n.nspname::text, c.relname::text \
     FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
     WHERE c.oid = pg_catalog.to_regclass($1)";

/// Identifiers quoted as PostgreSQL quotes them (only where needed), in order.
const QUOTE_SQL: &str = "SELECT pg_catalog.quote_ident(x) \
     FROM pg_catalog.unnest($1::text[]) WITH ORDINALITY AS u(x, i) ORDER BY i";

/// What the plan's nodes say about the order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Nodes {
    /// No `Sort` node: the order comes from an index (the first one named, if any).
    Ordered(Option<String>),
    /// A `Sort` node.
    Sorted,
}

impl PostgresConnector {
    /// One attempt at [`Connector::plan_order`] on `session`.
    pub(super) async fn order_on(
        &self,
        session: &mut Session,
        request: &OrderRequest<'_>,
        positions: &[usize],
    ) -> Result<OrderPlan, Failure> {
        let selection = request.selection;
        let plan = self.plan(session, selection).await?;
        let read_only = matches!(selection.relation, Relation::Query(_));
        let last = SQL.last_row_sql(&plan.select_list, &plan.from, &selection.cursor);
        let statement = session.prepare(&last).await?;
        let rows = query_rows(&mut session.client, &statement, &[], read_only).await?;
        // A cursor that cannot be converted (or an empty relation): the plan of a first read.
        let after: Option<Vec<Value>> = rows.first().and_then(|row| {
            let row = convert_row(&plan, row);
            positions
                .iter()
                .map(|&i| row.values[i].clone().ok())
                .collect()
        });
        let read = ReadRequest {
            selection,
            after: after.as_deref(),
            bound: request.bound,
            limit: Some(i64::try_from(request.limit).unwrap_or(i64::MAX)),
        };
        let page = self.page_statement(session, read, positions).await?;
        let explain = format!("EXPLAIN (FORMAT JSON) {}", page.sql);
        let transaction = session
            .client
            .build_transaction()
            .read_only(true)
            .start()
            .await?;
        transaction
            .batch_execute("SET LOCAL enable_sort = off")
            .await?;
        let row = transaction
            .query_one(&explain, &param_refs(&page.params))
            .await?;
        transaction.rollback().await?;
        let nodes = nodes(&row.try_get::<_, serde_json::Value>(0)?);
        match (&selection.relation, nodes) {
            (_, Nodes::Ordered(index)) => Ok(OrderPlan::Indexed { index }),
            (Relation::Table(table), Nodes::Sorted) => {
                self.sorted_table(session, table, &selection.cursor).await
            }
            (Relation::Query(_), Nodes::Sorted) => Ok(OrderPlan::Unknown {
                why: UnknownOrder::Query,
            }),
        }
    }

    /// The plan of a table whose cursor order no index supplies: the index to create, or
    /// unknown for a view or a foreign table.
    async fn sorted_table(
        &self,
        session: &mut Session,
        table: &str,
        cursor: &[String],
    ) -> Result<OrderPlan, Failure> {
        let statement = session.prepare(RELATION_SQL).await?;
        let row = session
            .client
            .query_one(&statement, &[&SQL.table_name(table)])
            .await?;
        let (kind, schema, name): (String, String, String) =
            (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
        if !matches!(kind.as_str(), "r" | "p" | "m") {
            // A view or a foreign table.
            return Ok(OrderPlan::Unknown {
                why: UnknownOrder::View,
            });
        }
        let mut names = vec![schema, name.clone(), dialect::cursor_index_name(&name)];
        names.extend(cursor.iter().cloned());
        let statement = session.prepare(QUOTE_SQL).await?;
        let quoted: Vec<String> = session
            .client
            .query(&statement, &[&names])
            .await?
            .iter()
            .map(|row| row.try_get(0))
            .collect::<Result<_, _>>()?;
        let [schema, name, index, columns @ ..] = quoted.as_slice() else {
            return Err(Failure::Statement(
                "quote_ident returned too few names".into(),
            ));
        };
        Ok(OrderPlan::Sorted {
            create_index: SQL.create_index_sql(
                index,
                &format!("{schema}.{name}"),
                columns,
                kind != "p",
            ),
        })
    }
}

/// Reads a plan (`EXPLAIN (FORMAT JSON)`): a `Sort` node anywhere means the rows are sorted;
/// else the first index scanned supplies the order.
pub(super) fn nodes(explain: &serde_json::Value) -> Nodes {
    fn walk(node: &serde_json::Value, sorted: &mut bool, index: &mut Option<String>) {
        if node.get("Node Type").and_then(|t| t.as_str()) == Some("Sort") {
            *sorted = true;
        }
        if index.is_none()
            && let Some(name) = node.get("Index Name").and_then(|n| n.as_str())
        {
            *index = Some(name.to_owned());
        }
        for child in node
            .get("Plans")
            .and_then(|p| p.as_array())
            .into_iter()
            .flatten()
        {
            walk(child, sorted, index);
        }
    }
    let (mut sorted, mut index) = (false, None);
    for statement in explain.as_array().into_iter().flatten() {
        if let Some(plan) = statement.get("Plan") {
            walk(plan, &mut sorted, &mut index);
        }
    }
    if sorted {
        Nodes::Sorted
    } else {
        Nodes::Ordered(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sort_node_anywhere_means_sorted_and_an_index_scan_names_its_index() {
        let plan = |root: serde_json::Value| serde_json::json!([{ "Plan": root }]);
        let seq = serde_json::json!({"Node Type": "Seq Scan", "Relation Name": "people"});
        let index = |kind: &str, name: &str| serde_json::json!({"Node Type": kind, "Index Name": name, "Relation Name": "people"});
        let cases = [
            (
                plan(serde_json::json!({"Node Type": "Limit", "Plans": [
                    {"Node Type": "Sort", "Sort Key": ["updated_at", "id"], "Plans": [seq]}
                ]})),
                Nodes::Sorted,
            ),
            (
                plan(serde_json::json!({"Node Type": "Limit", "Plans": [
                    {"Node Type": "Gather Merge", "Plans": [
                        {"Node Type": "Sort", "Plans": [{"Node Type": "Parallel Seq Scan"}]}
                    ]}
                ]})),
                Nodes::Sorted,
            ),
            (
                plan(serde_json::json!({"Node Type": "Limit", "Plans": [
                    index("Index Scan", "people_cursor")
                ]})),
                Nodes::Ordered(Some("people_cursor".into())),
            ),
            (
                plan(serde_json::json!({"Node Type": "Limit", "Plans": [
                    {"Node Type": "Incremental Sort", "Plans": [
                        index("Index Only Scan", "people_updated_at")
                    ]}
                ]})),
                Nodes::Ordered(Some("people_updated_at".into())),
            ),
            (
                plan(serde_json::json!({"Node Type": "Limit", "Plans": [
                    {"Node Type": "Merge Append", "Plans": [
                        index("Index Scan", "p1_cursor"), index("Index Scan", "p2_cursor")
                    ]}
                ]})),
                Nodes::Ordered(Some("p1_cursor".into())),
            ),
            (
                plan(serde_json::json!({"Node Type": "Result"})),
                Nodes::Ordered(None),
            ),
        ];
        for (explain, expected) in cases {
            assert_eq!(nodes(&explain), expected, "{explain}");
        }
    }
}
