//! SQL text shared by the SQL connectors (PostgreSQL, SQLite, MySQL): identifier quoting,
//! the `FROM` clause of a selection and the shape of a page query.
//!
//! Every page query has the same shape:
//!
//! ```sql
//! SELECT <one expression per selected column>
//! FROM <relation> AS src
//! [WHERE [(src.c1, src.c2, …) > (<p1>, <p2>, …) AND] src.c1 IS NOT NULL AND … [AND <upper bound>]]
//! ORDER BY src.c1, src.c2, …
//! LIMIT <limit>
//! ```
//!
//! Invariants:
//! - the relation is always aliased [`ALIAS`] and columns are always referred to as
//!   `src."column"`: a qualified name is an *input* column, so `ORDER BY` and `WHERE` compare
//!   the source's own values even when the select list casts a column (e.g. to text), and a
//!   misspelt column is an error instead of SQLite's double-quoted string literal;
//! - the cursor predicate and the ordering use the same columns in the same order, so a page
//!   is always a prefix of the remaining rows in cursor order, and an upper bound on the
//!   first cursor column (the horizon) cuts that order at one point: a row held back by the
//!   bound is never passed by the cursor;
//! - identifiers are quoted by doubling the quote character; values never appear in SQL
//!   text, only parameters do.

use crate::{Relation, Selection, Value};

/// Alias of the relation in every page query.
pub(crate) const ALIAS: &str = "src";

/// Quotes one identifier with `quote` (`"` for PostgreSQL and SQLite, `` ` `` for MySQL),
/// doubling any quote character inside it.
pub(crate) fn quote_ident(ident: &str, quote: char) -> String {
    let mut out = String::with_capacity(ident.len() + 2);
    out.push(quote);
    for c in ident.chars() {
        if c == quote {
            out.push(quote);
        }
        out.push(c);
    }
    out.push(quote);
    out
}

/// A column of the relation, qualified by [`ALIAS`]: `src."column"`.
pub(crate) fn column_ref(column: &str, quote: char) -> String {
    format!("{ALIAS}.{}", quote_ident(column, quote))
}

/// The `FROM` item of a selection, aliased [`ALIAS`]: a table as `"schema"."table" AS src`
/// (each dot-separated part quoted), a query as `(\n<query>\n) AS src` with trailing
/// semicolons removed (the newlines end a trailing `--` comment).
pub(crate) fn from_clause(relation: &Relation, quote: char) -> String {
    match relation {
        Relation::Table(table) => {
            let parts: Vec<String> = table.split('.').map(|p| quote_ident(p, quote)).collect();
            format!("{} AS {ALIAS}", parts.join("."))
        }
        Relation::Query(query) => {
            let query = query.trim().trim_end_matches(';').trim_end();
            format!("(\n{query}\n) AS {ALIAS}")
        }
    }
}

/// Every column of `columns`, qualified by [`ALIAS`] (see [`column_ref`]).
pub(crate) fn column_refs(columns: &[String], quote: char) -> Vec<String> {
    columns.iter().map(|c| column_ref(c, quote)).collect()
}

/// The predicate selecting rows with a NULL in a cursor column, `src."c1" IS NULL OR …`, over
/// the cursor columns that may hold NULL (`nullable` has one entry per selected column, as
/// `describe` reports it: only `Some(false)` is skipped); `None` when no cursor column may.
pub(crate) fn null_cursor_predicate(
    selection: &Selection,
    nullable: &[Option<bool>],
    quote: char,
) -> Option<String> {
    let terms: Vec<String> = selection
        .cursor
        .iter()
        .filter(|c| {
            selection
                .columns
                .iter()
                .position(|s| s == *c)
                .is_none_or(|i| nullable.get(i).copied().flatten() != Some(false))
        })
        .map(|c| format!("{} IS NULL", column_ref(c, quote)))
        .collect();
    (!terms.is_empty()).then(|| terms.join(" OR "))
}

/// The predicate that keeps rows with a NULL in any cursor column out of every page:
/// `src."c1" IS NOT NULL AND src."c2" IS NOT NULL …` (from qualified references). Without it
/// the first page (no stored cursor) would return them where NULL sorts first (SQLite,
/// MySQL) or the page is short (PostgreSQL), and a tuple comparison `(a, b) > (x, y)` is true
/// when `a > x` whatever `b` holds. Such rows are counted by `null_cursor_rows` instead.
pub(crate) fn cursor_not_null(cursor: &[String]) -> String {
    cursor
        .iter()
        .map(|c| format!("{c} IS NOT NULL"))
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// Checks a page request against its selection and returns, for each cursor column, its
/// index in [`Selection::columns`]. The error is a sentence for the administrator.
pub(crate) fn cursor_positions(
    selection: &Selection,
    after: Option<&[Value]>,
) -> Result<Vec<usize>, String> {
    if selection.columns.is_empty() {
        return Err("the selection reads no column".into());
    }
    if selection.cursor.is_empty() {
        return Err("the selection has no cursor column to order pages by".into());
    }
    let positions = selection
        .cursor
        .iter()
        .map(|c| {
            selection
                .columns
                .iter()
                .position(|s| s == c)
                .ok_or_else(|| format!("cursor column `{c}` is not among the selected columns"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(after) = after {
        if after.len() != selection.cursor.len() {
            return Err(format!(
                "the stored cursor has {} value(s) but the cursor has {} column(s) ({}); \
                 reset the cursor after changing the cursor columns",
                after.len(),
                selection.cursor.len(),
                selection.cursor.join(", ")
            ));
        }
        if let Some(i) = after.iter().position(|v| matches!(v, Value::Null)) {
            return Err(format!(
                "cursor column `{}` holds NULL in the stored cursor; cursor columns must be \
                 NOT NULL",
                selection.cursor[i]
            ));
        }
    }
    Ok(positions)
}

/// The parts of one page query; [`PageQuery::sql`] assembles them.
pub(crate) struct PageQuery<'a> {
    /// One select expression per selected column.
    pub select_list: &'a [String],
    /// The `FROM` item (from [`from_clause`]).
    pub from: &'a str,
    /// The cursor columns as qualified references (from [`column_ref`]).
    pub cursor: &'a [String],
    /// One parameter expression per cursor column when reading after a stored cursor.
    pub after: Option<&'a [String]>,
    /// Further conditions, ANDed: the NULL filter ([`cursor_not_null`]) and the upper bound
    /// on the first cursor column, if any.
    pub upper: Option<&'a str>,
    /// The parameter expression of the row limit.
    pub limit: &'a str,
}

impl PageQuery<'_> {
    /// The SQL text of the page query (see the module documentation).
    pub(crate) fn sql(&self) -> String {
        let mut conditions = Vec::new();
        if let Some(after) = self.after {
            conditions.push(if self.cursor.len() == 1 {
                format!("{} > {}", self.cursor[0], after[0])
            } else {
                format!("({}) > ({})", self.cursor.join(", "), after.join(", "))
            });
        }
        if let Some(upper) = self.upper {
            conditions.push(upper.to_owned());
        }
        let mut sql = format!("SELECT {} FROM {}", self.select_list.join(", "), self.from);
        if !conditions.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&conditions.join(" AND "));
        }
        sql.push_str(" ORDER BY ");
        sql.push_str(&self.cursor.join(", "));
        sql.push_str(" LIMIT ");
        sql.push_str(self.limit);
        sql
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted_by_doubling_the_quote() {
        let cases = [
            ("plain", '"', "\"plain\""),
            ("we\"ird", '"', "\"we\"\"ird\""),
            ("中文", '"', "\"中文\""),
            ("back`tick", '`', "`back``tick`"),
        ];
        for (ident, quote, expected) in cases {
            assert_eq!(quote_ident(ident, quote), expected);
        }
    }

    #[test]
    fn tables_are_split_at_dots_and_queries_wrapped() {
        assert_eq!(
            from_clause(&Relation::Table("hr.person".into()), '"'),
            "\"hr\".\"person\" AS src"
        );
        assert_eq!(
            from_clause(&Relation::Query("SELECT 1 AS x -- note\n;; ".into()), '"'),
            "(\nSELECT 1 AS x -- note\n) AS src"
        );
    }

    #[test]
    fn page_query_has_cursor_predicate_bound_order_and_limit() {
        let select = vec!["src.\"a\"".to_owned(), "src.\"b\"".to_owned()];
        let cursor = vec!["src.\"a\"".to_owned(), "src.\"b\"".to_owned()];
        let after = vec!["$1".to_owned(), "$2".to_owned()];
        let q = PageQuery {
            select_list: &select,
            from: "\"t\" AS src",
            cursor: &cursor,
            after: Some(&after),
            upper: Some("src.\"a\" < $3"),
            limit: "$4",
        };
        assert_eq!(
            q.sql(),
            "SELECT src.\"a\", src.\"b\" FROM \"t\" AS src WHERE (src.\"a\", src.\"b\") > ($1, $2) \
             AND src.\"a\" < $3 ORDER BY src.\"a\", src.\"b\" LIMIT $4"
        );
        let single = PageQuery {
            cursor: &cursor[..1],
            after: Some(&after[..1]),
            upper: None,
            ..q
        };
        assert_eq!(
            single.sql(),
            "SELECT src.\"a\", src.\"b\" FROM \"t\" AS src WHERE src.\"a\" > $1 ORDER BY src.\"a\" \
             LIMIT $4"
        );
    }

    #[test]
    fn requests_with_bad_cursors_are_refused() {
        let sel = Selection {
            relation: Relation::Table("t".into()),
            columns: vec!["id".into(), "at".into()],
            cursor: vec!["at".into(), "id".into()],
        };
        assert_eq!(cursor_positions(&sel, None).unwrap(), vec![1, 0]);
        assert!(cursor_positions(&sel, Some(&[Value::Int(1)])).is_err());
        assert!(cursor_positions(&sel, Some(&[Value::Null, Value::Int(1)])).is_err());
        let missing = Selection {
            cursor: vec!["nope".into()],
            ..sel.clone()
        };
        assert!(
            cursor_positions(&missing, None)
                .unwrap_err()
                .contains("nope")
        );
        let none = Selection {
            cursor: vec![],
            ..sel
        };
        assert!(cursor_positions(&none, None).is_err());
    }
}
