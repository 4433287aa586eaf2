//! The SQL dialect of a source: every piece of SQL text the SQL connectors build, in one place
//! — identifier quoting, the `FROM` item, parameters and how a value is bound in a column's
//! own type, the tuple cursor predicate and the page query, the horizon predicate, the NULL
//! cursor filter, the key lookup, and the resolution of selected columns against the
//! catalogue's column metadata (name, type, nullability). PostgreSQL and SQLite use it; MySQL
//! adopts it next ([`Dialect::MYSQL`] is already described).
//!
//! Every page query has the same shape:
//!
//! ```sql
//! SELECT <one expression per selected column>
//! FROM <relation> AS src
//! [WHERE (src.c1, src.c2, …) > (<p1>, <p2>, …) [AND <horizon predicate on src.c1>]]
//! ORDER BY src.c1, src.c2, …
//! LIMIT <limit>
//! ```
//!
//! Invariants:
//! - the relation is always aliased [`ALIAS`] and columns are always referred to as
//!   `src."column"`: a qualified name is an *input* column, so `ORDER BY` and `WHERE` compare
//!   the source's own values even when the select list casts a column (e.g. to text), and a
//!   misspelt column is an error instead of SQLite's double-quoted string literal;
//! - a qualified name is still not proof of a column (PostgreSQL reads `src.name` as the call
//!   `name(src)` when there is no such column; SQLite has `rowid`): every selected column is
//!   resolved against the catalogue first ([`resolve_columns`]), and a name that is not one of
//!   the relation's own columns is refused (default deny);
//! - the cursor predicate and the ordering use the same columns in the same order, so a page
//!   is always a prefix of the remaining rows in cursor order, and an upper bound on the
//!   first cursor column (the horizon) cuts that order at one point: a row held back by the
//!   bound is never passed by the cursor;
//! - rows with a NULL in a cursor column have no place in the order; they are counted apart
//!   ([`Dialect::null_cursor_predicate`]). Pages do not filter them yet (see
//!   [`crate::Connector::read_page`]);
//! - identifiers are quoted by doubling the quote character; values never appear in SQL
//!   text, only parameters do, each bound in the type of the column it is compared with
//!   ([`Dialect::bind`]).

use crate::{Relation, Selection, Value};

/// Alias of the relation in every query.
pub(crate) const ALIAS: &str = "src";

/// How a source writes the n-th parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Params {
    /// `$1`, `$2`, … (PostgreSQL).
    Dollar,
    /// `?1`, `?2`, … (SQLite).
    Numbered,
    /// `?` in order (MySQL).
    Positional,
}

/// How a bound value is turned into the column's own type inside the statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BindAs<'a> {
    /// Bound as it is (SQLite binds by storage class; the value already has the column's).
    Native,
    /// Bound as text and cast to this type (PostgreSQL: `$1::text::"pg_catalog"."int8"`).
    TextCast(&'a str),
    /// Bound as base64 text and decoded to bytes (PostgreSQL `bytea`).
    Base64,
}

/// How the first cursor column is compared with the horizon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HorizonCompare {
    /// As an instant: `c1 < horizon` (PostgreSQL `timestamp`/`timestamptz`; SQLite text in
    /// the column's own layout).
    Instant,
    /// As a day: `c1 < horizon::date` (PostgreSQL `date`).
    Date,
}

/// One column as the catalogue describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ColumnMeta {
    /// The column's name in the catalogue.
    pub name: String,
    /// The source's type name (declared type for SQLite; empty when unknown).
    pub source_type: String,
    /// Whether it may hold NULL: `Some` for table columns, `None` for views and queries.
    pub nullable: Option<bool>,
}

/// The SQL dialect of one kind of source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Dialect {
    /// The identifier quote character.
    quote: char,
    /// How parameters are written.
    params: Params,
    /// Whether identifiers compare without regard to ASCII case (SQLite, MySQL columns).
    case_insensitive: bool,
    /// Whether a key lookup binds one array parameter (`= ANY($1)`) rather than a list.
    array_lookup: bool,
}

impl Dialect {
    /// PostgreSQL: `"ident"`, `$n`, `= ANY($1)`.
    pub(crate) const POSTGRES: Dialect = Dialect {
        quote: '"',
        params: Params::Dollar,
        case_insensitive: false,
        array_lookup: true,
    };
    /// SQLite: `"ident"`, `?n`, `IN (?1, …)`.
    pub(crate) const SQLITE: Dialect = Dialect {
        quote: '"',
        params: Params::Numbered,
        case_insensitive: true,
        array_lookup: false,
    };
    /// MySQL and MariaDB: `` `ident` ``, `?`, `IN (?, …)`.
    #[allow(dead_code)] // adopted by mysql.rs after the branches merge
    pub(crate) const MYSQL: Dialect = Dialect {
        quote: '`',
        params: Params::Positional,
        case_insensitive: true,
        array_lookup: false,
    };

    /// Quotes one identifier, doubling any quote character inside it.
    pub(crate) fn quote_ident(&self, ident: &str) -> String {
        quote_ident(ident, self.quote)
    }

    /// A column of the relation, qualified by [`ALIAS`]: `src."column"`.
    pub(crate) fn column_ref(&self, column: &str) -> String {
        format!("{ALIAS}.{}", self.quote_ident(column))
    }

    /// Every column of `columns` as [`Dialect::column_ref`].
    pub(crate) fn column_refs(&self, columns: &[String]) -> Vec<String> {
        columns.iter().map(|c| self.column_ref(c)).collect()
    }

    /// A table name with each dot-separated part quoted: `"schema"."table"`.
    pub(crate) fn table_name(&self, table: &str) -> String {
        let parts: Vec<String> = table.split('.').map(|p| self.quote_ident(p)).collect();
        parts.join(".")
    }

    /// The `FROM` item of a selection, aliased [`ALIAS`]: a table as `"schema"."table" AS src`,
    /// a query as `(\n<query>\n) AS src` with trailing semicolons removed (the newlines end a
    /// trailing `--` comment).
    pub(crate) fn relation_sql(&self, relation: &Relation) -> String {
        match relation {
            Relation::Table(table) => format!("{} AS {ALIAS}", self.table_name(table)),
            Relation::Query(query) => {
                let query = query.trim().trim_end_matches(';').trim_end();
                format!("(\n{query}\n) AS {ALIAS}")
            }
        }
    }

    /// The n-th parameter (from 1).
    pub(crate) fn param(&self, n: usize) -> String {
        match self.params {
            Params::Dollar => format!("${n}"),
            Params::Numbered => format!("?{n}"),
            Params::Positional => "?".to_owned(),
        }
    }

    /// The n-th parameter, turned into the column's own type (see [`BindAs`]).
    pub(crate) fn bind(&self, n: usize, how: BindAs<'_>) -> String {
        let p = self.param(n);
        match how {
            BindAs::Native => p,
            BindAs::TextCast(ty) => format!("{p}::text::{ty}"),
            BindAs::Base64 => format!("pg_catalog.decode({p}::text, 'base64')"),
        }
    }

    /// `SELECT <refs> FROM <relation> LIMIT 0`: prepared to learn the result columns.
    pub(crate) fn describe_sql(&self, selection: &Selection) -> String {
        format!(
            "SELECT {} FROM {} LIMIT 0",
            self.column_refs(&selection.columns).join(", "),
            self.relation_sql(&selection.relation)
        )
    }

    /// `SELECT * FROM (<query>) AS src LIMIT 0`: the output columns of a relation.
    pub(crate) fn output_columns_sql(&self, relation: &Relation) -> String {
        format!("SELECT * FROM {} LIMIT 0", self.relation_sql(relation))
    }

    /// `src."c1" IS NULL OR …` over the cursor columns that may hold NULL (`nullable`: one
    /// entry per selected column, as [`ColumnMeta::nullable`]; only `Some(false)` is skipped);
    /// `None` when no cursor column may.
    pub(crate) fn null_cursor_predicate(
        &self,
        selection: &Selection,
        nullable: &[Option<bool>],
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
            .map(|c| format!("{} IS NULL", self.column_ref(c)))
            .collect();
        (!terms.is_empty()).then(|| terms.join(" OR "))
    }

    /// The horizon predicate on the first cursor column (a qualified reference), the horizon
    /// bound as the n-th parameter.
    pub(crate) fn horizon_predicate(
        &self,
        first: &str,
        n: usize,
        compare: HorizonCompare,
    ) -> String {
        let p = self.param(n);
        match (self.params, compare) {
            (Params::Dollar, HorizonCompare::Instant) => format!("{first} < {p}::timestamptz"),
            (Params::Dollar, HorizonCompare::Date) => {
                format!("{first} < ({p}::timestamptz)::date")
            }
            (_, _) => format!("{first} < {p}"),
        }
    }

    /// The lookup of rows by key: `WHERE src."key" = ANY(<array>)` (PostgreSQL: `array` is the
    /// one bound array, already in the key column's type) or `WHERE src."key" IN (<p1>, …)`
    /// with `keys` parameters from 1.
    pub(crate) fn lookup_sql(
        &self,
        select_list: &[String],
        from: &str,
        key: &str,
        keys: usize,
        array: &str,
    ) -> String {
        let condition = if self.array_lookup {
            format!("= ANY({array})")
        } else {
            let params: Vec<String> = (1..=keys).map(|n| self.param(n)).collect();
            format!("IN ({})", params.join(", "))
        };
        format!(
            "SELECT {} FROM {from} WHERE {} {condition}",
            select_list.join(", "),
            self.column_ref(key)
        )
    }

    /// Resolves every selected column against the relation's own columns `found` (default
    /// deny), in selection order; `what` names the relation in the error ("table `hr.person`",
    /// "the query's output"). The error is a sentence naming the first missing column.
    pub(crate) fn resolve_columns(
        &self,
        selection: &Selection,
        found: &[ColumnMeta],
        what: &str,
    ) -> Result<Vec<ColumnMeta>, String> {
        selection
            .columns
            .iter()
            .map(|c| {
                found
                    .iter()
                    .find(|f| {
                        if self.case_insensitive {
                            f.name.eq_ignore_ascii_case(c)
                        } else {
                            f.name == *c
                        }
                    })
                    .cloned()
                    .ok_or_else(|| {
                        format!(
                            "column `{c}` is not a column of {what}; only the relation's own \
                             columns can be read (check the spelling and the case)"
                        )
                    })
            })
            .collect()
    }
}

/// Quotes one identifier with `quote`, doubling any quote character inside it.
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
    /// The `FROM` item (from [`Dialect::relation_sql`]).
    pub from: &'a str,
    /// The cursor columns as qualified references (from [`Dialect::column_ref`]).
    pub cursor: &'a [String],
    /// One parameter expression per cursor column when reading after a stored cursor.
    pub after: Option<&'a [String]>,
    /// The horizon predicate on the first cursor column, if any.
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
            (Dialect::POSTGRES, "plain", "\"plain\""),
            (Dialect::POSTGRES, "we\"ird", "\"we\"\"ird\""),
            (Dialect::SQLITE, "中文", "\"中文\""),
            (Dialect::MYSQL, "back`tick", "`back``tick`"),
        ];
        for (dialect, ident, expected) in cases {
            assert_eq!(dialect.quote_ident(ident), expected);
        }
    }

    #[test]
    fn tables_are_split_at_dots_and_queries_wrapped() {
        let d = Dialect::POSTGRES;
        assert_eq!(
            d.relation_sql(&Relation::Table("hr.person".into())),
            "\"hr\".\"person\" AS src"
        );
        assert_eq!(
            d.relation_sql(&Relation::Query("SELECT 1 AS x -- note\n;; ".into())),
            "(\nSELECT 1 AS x -- note\n) AS src"
        );
    }

    #[test]
    fn parameters_and_typed_binds_follow_the_dialect() {
        let pg = Dialect::POSTGRES;
        assert_eq!(pg.param(3), "$3");
        assert_eq!(
            pg.bind(1, BindAs::TextCast("\"pg_catalog\".\"int8\"")),
            "$1::text::\"pg_catalog\".\"int8\""
        );
        assert_eq!(
            pg.bind(2, BindAs::Base64),
            "pg_catalog.decode($2::text, 'base64')"
        );
        assert_eq!(Dialect::SQLITE.bind(2, BindAs::Native), "?2");
        assert_eq!(Dialect::MYSQL.param(2), "?");
        assert_eq!(
            pg.horizon_predicate("src.\"d\"", 4, HorizonCompare::Date),
            "src.\"d\" < ($4::timestamptz)::date"
        );
        assert_eq!(
            Dialect::SQLITE.horizon_predicate("src.\"at\"", 4, HorizonCompare::Instant),
            "src.\"at\" < ?4"
        );
    }

    #[test]
    fn lookups_bind_an_array_or_a_list() {
        let select = vec!["src.\"id\"".to_owned()];
        assert_eq!(
            Dialect::POSTGRES.lookup_sql(&select, "t AS src", "id", 3, "$1::text[]::int8[]"),
            "SELECT src.\"id\" FROM t AS src WHERE src.\"id\" = ANY($1::text[]::int8[])"
        );
        assert_eq!(
            Dialect::SQLITE.lookup_sql(&select, "t AS src", "id", 3, ""),
            "SELECT src.\"id\" FROM t AS src WHERE src.\"id\" IN (?1, ?2, ?3)"
        );
    }

    #[test]
    fn only_the_relations_own_columns_resolve() {
        let sel = Selection {
            relation: Relation::Table("t".into()),
            columns: vec!["ID".into(), "at".into()],
            cursor: vec!["at".into(), "ID".into()],
        };
        let found = [
            ColumnMeta {
                name: "id".into(),
                source_type: "int8".into(),
                nullable: Some(false),
            },
            ColumnMeta {
                name: "at".into(),
                source_type: "timestamptz".into(),
                nullable: Some(true),
            },
        ];
        let err = Dialect::POSTGRES
            .resolve_columns(&sel, &found, "table `t`")
            .unwrap_err();
        assert!(err.contains("`ID`") && err.contains("table `t`"), "{err}");
        let resolved = Dialect::SQLITE
            .resolve_columns(&sel, &found, "table `t`")
            .unwrap();
        assert_eq!(resolved[0].name, "id");
        let nullable: Vec<Option<bool>> = resolved.iter().map(|c| c.nullable).collect();
        assert_eq!(
            Dialect::SQLITE.null_cursor_predicate(&sel, &nullable),
            Some("src.\"at\" IS NULL".to_owned())
        );
        assert_eq!(
            Dialect::SQLITE.null_cursor_predicate(&sel, &[Some(false), Some(false)]),
            None
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
