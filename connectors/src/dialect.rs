//! The SQL dialect of a source: every piece of SQL text the SQL connectors build, in one place
//! — identifier quoting, the `FROM` item, parameters and how a value is bound in a column's
//! own type, the tuple cursor predicate and the page query, the horizon predicate, the NULL
//! cursor filter and count, the key lookup, the last row in cursor order and the `CREATE INDEX`
//! a DBA runs on the cursor columns ([`crate::Connector::plan_order`]), and the resolution of
//! selected columns against the catalogue's column metadata (name, type, nullability). PostgreSQL, MySQL/MariaDB and SQLite
//! all use it; what differs between them is a field of [`Dialect`] ([`Dialect::POSTGRES`],
//! [`Dialect::MYSQL`], [`Dialect::SQLITE`]) or a [`BindAs`] the connector chooses per column
//! (PostgreSQL's text casts, MySQL's exact `DECIMAL` cast).
//!
//! Every page query has the same shape:
//!
//! ```sql
//! SELECT <one expression per selected column>
//! FROM <relation> AS src
//! WHERE src.c1 IS NOT NULL AND src.c2 IS NOT NULL …
//!   [AND (src.c1, src.c2, …) > (<p1>, <p2>, …)] [AND <horizon predicate on src.c1>]
//! ORDER BY src.c1, src.c2, …
//! [LIMIT <limit>]
//! ```
//!
//! (Without `LIMIT` it is a streamed read: every remaining row within the bound, sorted once;
//! see [`crate::Connector::scan`].)
//!
//! (MySQL writes the cursor predicate `src.c1 >= <p1> AND (src.c1, …) > (<p1>, …)`, so its
//! optimizer gets a range on `c1`: [`Dialect::leading_range`].)
//!
//! Invariants:
//! - the relation is always aliased [`ALIAS`] and columns are always referred to as
//!   `src."column"`: a qualified name is an *input* column, so `ORDER BY` and `WHERE` compare
//!   the source's own values even when the select list casts a column (e.g. to text), and a
//!   misspelt column is an error instead of SQLite's double-quoted string literal;
//! - a qualified name is still not proof of a column (PostgreSQL reads `src.name` as the call
//!   `name(src)` when there is no such column; SQLite has `rowid`): every selected column is
//!   resolved against the catalogue first ([`Dialect::resolve_columns`]), and a name that is
//!   not one of the relation's own columns is refused (default deny);
//! - the cursor predicate and the ordering use the same columns in the same order, so a page
//!   is always a prefix of the remaining rows in cursor order, and an upper bound on the
//!   first cursor column (the horizon) cuts that order at one point: a row held back by the
//!   bound is never passed by the cursor;
//! - a page never returns a row with a NULL in a cursor column: such a row has no place in the
//!   order (PostgreSQL sorts NULL last, SQLite and MySQL first, and `(a, NULL) > (x, y)` is
//!   true when `a > x`), so every page query says `src.c IS NOT NULL` for **every** cursor
//!   column, NOT NULL or not. Always, rather than only where the catalogue says a column may
//!   hold NULL: the guarantee then does not rest on metadata that views and queries do not
//!   have and that an `ALTER TABLE … DROP NOT NULL` changes under a running agent, and on a
//!   `NOT NULL` column the condition is free (PostgreSQL and MySQL/MariaDB use it as an index
//!   condition or drop it). Those rows are counted and read apart, by the complementary
//!   [`Dialect::null_cursor_queries`] (which looks only at columns that may hold NULL: a count
//!   of `c IS NULL` over a `NOT NULL` column is known to be zero and could cost a scan);
//! - identifiers are quoted by doubling the quote character; values never appear in SQL
//!   text, only parameters do, each bound in the type of the column it is compared with
//!   ([`BindAs`]). The statement builders return the parameter values in the order the
//!   dialect numbers them, so a connector never counts parameters itself.

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
    /// `?` in order (MySQL): a value used twice is bound twice.
    Positional,
}

/// How identifiers compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fold {
    /// Exactly (PostgreSQL's quoted identifiers).
    Exact,
    /// Without regard to ASCII case (SQLite).
    Ascii,
    /// Without regard to case (MySQL and MariaDB column names).
    Unicode,
}

/// How a bound value is turned into the column's own type inside the statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BindAs<'a> {
    /// Bound as it is: SQLite binds by storage class (the value already has the column's);
    /// MySQL's binary protocol carries integers, dates and timestamps typed.
    Native,
    /// Bound as text and cast to this type (PostgreSQL: `$1::text::"pg_catalog"."int8"`).
    TextCast(&'a str),
    /// Bound as base64 text and decoded to bytes (PostgreSQL `bytea`).
    Base64,
    /// Bound as its exact decimal text and cast to `DECIMAL(65, scale)` (MySQL: a string
    /// compared with a `DECIMAL` goes through DOUBLE and loses the digits past ~15).
    Decimal(u32),
}

/// How the first cursor column is compared with the horizon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HorizonCompare {
    /// As an instant: `c1 < horizon` (PostgreSQL `timestamp`/`timestamptz`; SQLite text in
    /// the column's own layout; MySQL, where the connector binds the bound in the column's
    /// own type and zone).
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
    /// How identifiers compare.
    fold: Fold,
    /// Whether the cursor predicate repeats its first column as a range of its own:
    /// `c1 >= p1 AND (c1, c2) > (p1, p2)` (MySQL's optimizer does not derive a range from a
    /// row comparison).
    leading_range: bool,
    /// The row count aggregate, as it is safe to write in the dialect.
    count: &'static str,
}

impl Dialect {
    /// PostgreSQL: `"ident"`, `$n`, `= ANY($1)` lookups.
    pub(crate) const POSTGRES: Dialect = Dialect {
        quote: '"',
        params: Params::Dollar,
        fold: Fold::Exact,
        leading_range: false,
        count: "pg_catalog.count(*)",
    };
    /// SQLite: `"ident"`, `?n`, `IN (?1, …)` lookups.
    pub(crate) const SQLITE: Dialect = Dialect {
        quote: '"',
        params: Params::Numbered,
        fold: Fold::Ascii,
        leading_range: false,
        count: "count(*)",
    };
    /// MySQL and MariaDB: `` `ident` ``, `?`, `IN (?, …)` lookups, a leading range on the
    /// first cursor column.
    pub(crate) const MYSQL: Dialect = Dialect {
        quote: '`',
        params: Params::Positional,
        fold: Fold::Unicode,
        leading_range: true,
        count: "COUNT(*)",
    };

    /// Quotes one identifier, doubling any quote character inside it.
    pub(crate) fn quote_ident(&self, ident: &str) -> String {
        let mut out = String::with_capacity(ident.len() + 2);
        out.push(self.quote);
        for c in ident.chars() {
            if c == self.quote {
                out.push(self.quote);
            }
            out.push(c);
        }
        out.push(self.quote);
        out
    }

    /// Whether two identifiers name the same column to the source.
    pub(crate) fn same_name(&self, a: &str, b: &str) -> bool {
        match self.fold {
            Fold::Exact => a == b,
            Fold::Ascii => a.eq_ignore_ascii_case(b),
            Fold::Unicode => a == b || a.to_lowercase() == b.to_lowercase(),
        }
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
            BindAs::Decimal(scale) => format!("CAST({p} AS DECIMAL(65, {}))", scale.min(38)),
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

    /// The statements that count and read the rows no page returns: `nullable` has one entry
    /// per selected column, as [`ColumnMeta::nullable`]; only cursor columns that may hold
    /// NULL are looked at (`Some(false)` is skipped). `None` when no cursor column may.
    /// The rows statement takes one parameter, the row limit.
    pub(crate) fn null_cursor_queries(
        &self,
        selection: &Selection,
        nullable: &[Option<bool>],
        select_list: &[String],
        from: &str,
    ) -> Option<NullCursorQueries> {
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
        if terms.is_empty() {
            return None;
        }
        let predicate = terms.join(" OR ");
        Some(NullCursorQueries {
            count: format!("SELECT {} FROM {from} WHERE {predicate}", self.count),
            rows: format!(
                "SELECT {} FROM {from} WHERE {predicate} LIMIT {}",
                select_list.join(", "),
                self.param(1)
            ),
        })
    }

    /// The horizon predicate on the first cursor column (a qualified reference), the horizon
    /// bound as the n-th parameter.
    fn horizon_predicate(&self, first: &str, n: usize, compare: HorizonCompare) -> String {
        let p = self.param(n);
        match (self.params, compare) {
            (Params::Dollar, HorizonCompare::Instant) => format!("{first} < {p}::timestamptz"),
            (Params::Dollar, HorizonCompare::Date) => {
                format!("{first} < ({p}::timestamptz)::date")
            }
            (_, _) => format!("{first} < {p}"),
        }
    }

    /// The page query of the module documentation, and its parameter values in the order
    /// the statement takes them.
    pub(crate) fn page_query<T: Clone>(&self, query: PageQuery<'_, T>) -> (String, Vec<T>) {
        let cursor = self.column_refs(query.cursor);
        let mut binder = Binder::new(*self);
        let mut conditions: Vec<String> =
            cursor.iter().map(|c| format!("{c} IS NOT NULL")).collect();
        if let Some(after) = &query.after {
            let mut leading = None;
            if self.leading_range && cursor.len() > 1 {
                let (how, value) = &after[0];
                leading = Some(format!("{} >= {}", cursor[0], binder.bind(0, value, *how)));
            }
            let values: Vec<String> = after
                .iter()
                .enumerate()
                .map(|(i, (how, value))| binder.bind(i, value, *how))
                .collect();
            conditions.extend(leading);
            conditions.push(if cursor.len() == 1 {
                format!("{} > {}", cursor[0], values[0])
            } else {
                format!("({}) > ({})", cursor.join(", "), values.join(", "))
            });
        }
        if let Some((compare, value)) = &query.horizon {
            let n = binder.number(Slot::Horizon, value);
            conditions.push(self.horizon_predicate(&cursor[0], n, *compare));
        }
        let mut sql = format!(
            "SELECT {} FROM {} WHERE {} ORDER BY {}",
            query.select_list.join(", "),
            query.from,
            conditions.join(" AND "),
            cursor.join(", "),
        );
        if let Some(limit) = &query.limit {
            let n = binder.number(Slot::Limit, limit);
            sql.push_str(&format!(" LIMIT {}", self.param(n)));
        }
        (sql, binder.values)
    }

    /// The last row a page can return, in cursor order: `SELECT <select list> FROM <relation>
    /// WHERE <every cursor column> IS NOT NULL ORDER BY src.c1 DESC, src.c2 DESC … LIMIT 1`.
    /// Its cursor is where a steady-state pull reads after ([`crate::Connector::plan_order`]).
    pub(crate) fn last_row_sql(
        &self,
        select_list: &[String],
        from: &str,
        cursor: &[String],
    ) -> String {
        let cursor = self.column_refs(cursor);
        let not_null: Vec<String> = cursor.iter().map(|c| format!("{c} IS NOT NULL")).collect();
        let descending: Vec<String> = cursor.iter().map(|c| format!("{c} DESC")).collect();
        format!(
            "SELECT {} FROM {from} WHERE {} ORDER BY {} LIMIT 1",
            select_list.join(", "),
            not_null.join(" AND "),
            descending.join(", ")
        )
    }

    /// The statement that creates an index on the cursor columns, as a DBA runs it: `index`,
    /// `table` and `columns` already quoted for the source (PostgreSQL quotes only where its
    /// own `quote_ident` does; the others quote every identifier). `concurrently`: without
    /// blocking writes (PostgreSQL, a table that is not partitioned).
    pub(crate) fn create_index_sql(
        &self,
        index: &str,
        table: &str,
        columns: &[String],
        concurrently: bool,
    ) -> String {
        format!(
            "CREATE INDEX {}{index} ON {table} ({});",
            if concurrently { "CONCURRENTLY " } else { "" },
            columns.join(", ")
        )
    }

    /// The lookup of rows by key: `WHERE src."key" = ANY(<array>)` (PostgreSQL: the one bound
    /// array, already in the key column's type) or `WHERE src."key" IN (<p1>, …)`, one
    /// parameter per key from 1, each bound as `how`.
    pub(crate) fn lookup_sql(
        &self,
        select_list: &[String],
        from: &str,
        key: &str,
        keys: LookupKeys<'_>,
    ) -> String {
        let condition = match keys {
            LookupKeys::Array(array) => format!("= ANY({array})"),
            LookupKeys::List { count, how } => {
                let params: Vec<String> = (1..=count).map(|n| self.bind(n, how)).collect();
                format!("IN ({})", params.join(", "))
            }
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
                    .find(|f| self.same_name(&f.name, c))
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

/// What a page parameter stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    /// The stored cursor value of the i-th cursor column.
    After(usize),
    /// The horizon.
    Horizon,
    /// The row limit.
    Limit,
}

/// Numbers a statement's parameters and keeps their values in that order: a numbered
/// dialect refers to a value used twice by one number, a positional one binds it again.
struct Binder<T> {
    dialect: Dialect,
    slots: Vec<Slot>,
    values: Vec<T>,
}

impl<T: Clone> Binder<T> {
    fn new(dialect: Dialect) -> Self {
        Binder {
            dialect,
            slots: Vec::new(),
            values: Vec::new(),
        }
    }

    /// The number of the parameter that carries `slot`'s `value`.
    fn number(&mut self, slot: Slot, value: &T) -> usize {
        if self.dialect.params != Params::Positional
            && let Some(i) = self.slots.iter().position(|s| *s == slot)
        {
            return i + 1;
        }
        self.slots.push(slot);
        self.values.push(value.clone());
        self.values.len()
    }

    /// The expression of the stored value of cursor column `i`, bound `how`.
    fn bind(&mut self, i: usize, value: &T, how: BindAs<'_>) -> String {
        let n = self.number(Slot::After(i), value);
        self.dialect.bind(n, how)
    }
}

/// The statements of [`Dialect::null_cursor_queries`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NullCursorQueries {
    /// `SELECT count(*) FROM <relation> WHERE <a nullable cursor column> IS NULL OR …`.
    pub count: String,
    /// The selected columns of those rows, `LIMIT` the first parameter.
    pub rows: String,
}

/// The keys of a [`Dialect::lookup_sql`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LookupKeys<'a> {
    /// One bound array expression (PostgreSQL).
    Array(&'a str),
    /// `count` parameters, each bound `how`.
    List {
        /// How many keys.
        count: usize,
        /// How each is bound.
        how: BindAs<'a>,
    },
}

/// The name of the index [`Dialect::create_index_sql`] creates on `table` (its own name,
/// without schema): `exchange_<table>_cursor`, the table's part cut (on a character boundary)
/// so that the name fits every source's limit (63 bytes, PostgreSQL's).
pub(crate) fn cursor_index_name(table: &str) -> String {
    const MAX: usize = 63;
    let (prefix, suffix) = ("exchange_", "_cursor");
    let room = MAX - prefix.len() - suffix.len();
    let mut end = table.len().min(room);
    while !table.is_char_boundary(end) {
        end -= 1;
    }
    format!("{prefix}{}{suffix}", &table[..end])
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

/// The parts of one page query; [`Dialect::page_query`] assembles them. `T` is the
/// connector's parameter value.
pub(crate) struct PageQuery<'a, T> {
    /// One select expression per selected column.
    pub select_list: &'a [String],
    /// The `FROM` item (from [`Dialect::relation_sql`]).
    pub from: &'a str,
    /// The cursor columns, by name ([`Selection::cursor`]).
    pub cursor: &'a [String],
    /// When reading after a stored cursor: per cursor column, how its stored value is bound
    /// and the value.
    pub after: Option<Vec<(BindAs<'a>, T)>>,
    /// The horizon on the first cursor column, if the page is bounded, and its value.
    pub horizon: Option<(HorizonCompare, T)>,
    /// The row limit; none for a streamed read, which returns every remaining row within
    /// the bound with one sort of them (see [`crate::Connector::scan`]).
    pub limit: Option<T>,
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
        assert_eq!(
            Dialect::MYSQL.relation_sql(&Relation::Table("hr.per`son".into())),
            "`hr`.`per``son` AS src"
        );
    }

    #[test]
    fn names_compare_as_the_source_compares_them() {
        assert!(!Dialect::POSTGRES.same_name("Id", "id"));
        assert!(Dialect::SQLITE.same_name("Id", "id"));
        assert!(!Dialect::SQLITE.same_name("É", "é"));
        assert!(Dialect::MYSQL.same_name("É", "é"));
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
            Dialect::MYSQL.bind(2, BindAs::Decimal(40)),
            "CAST(? AS DECIMAL(65, 38))"
        );
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
            Dialect::POSTGRES.lookup_sql(
                &select,
                "t AS src",
                "id",
                LookupKeys::Array("$1::text[]::int8[]")
            ),
            "SELECT src.\"id\" FROM t AS src WHERE src.\"id\" = ANY($1::text[]::int8[])"
        );
        let list = |how| LookupKeys::List { count: 3, how };
        assert_eq!(
            Dialect::SQLITE.lookup_sql(&select, "t AS src", "id", list(BindAs::Native)),
            "SELECT src.\"id\" FROM t AS src WHERE src.\"id\" IN (?1, ?2, ?3)"
        );
        let select = vec!["src.`id`".to_owned()];
        assert_eq!(
            Dialect::MYSQL.lookup_sql(&select, "t AS src", "id", list(BindAs::Decimal(2))),
            "SELECT src.`id` FROM t AS src WHERE src.`id` IN (CAST(? AS DECIMAL(65, 2)), \
             CAST(? AS DECIMAL(65, 2)), CAST(? AS DECIMAL(65, 2)))"
        );
    }

    #[test]
    fn only_the_relations_own_columns_resolve_and_nullable_cursor_columns_are_counted() {
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
        let select = Dialect::SQLITE.column_refs(&sel.columns);
        assert_eq!(
            Dialect::SQLITE.null_cursor_queries(&sel, &nullable, &select, "\"t\" AS src"),
            Some(NullCursorQueries {
                count: "SELECT count(*) FROM \"t\" AS src WHERE src.\"at\" IS NULL".into(),
                rows: "SELECT src.\"ID\", src.\"at\" FROM \"t\" AS src WHERE src.\"at\" IS NULL \
                       LIMIT ?1"
                    .into(),
            })
        );
        // A view's or query's columns may all hold NULL.
        let pg = Dialect::POSTGRES.null_cursor_queries(&sel, &[None, None], &select, "v AS src");
        assert_eq!(
            pg.unwrap().count,
            "SELECT pg_catalog.count(*) FROM v AS src WHERE src.\"at\" IS NULL OR src.\"ID\" IS NULL"
        );
        assert_eq!(
            Dialect::SQLITE.null_cursor_queries(
                &sel,
                &[Some(false), Some(false)],
                &select,
                "t AS src"
            ),
            None
        );
    }

    #[test]
    fn page_query_filters_null_cursors_and_has_cursor_predicate_bound_order_and_limit() {
        let select = vec!["src.\"a\"".to_owned(), "src.\"b\"".to_owned()];
        let cursor = vec!["a".to_owned(), "b".to_owned()];
        let ty = "\"pg_catalog\".\"int8\"";
        let (sql, values) = Dialect::POSTGRES.page_query(PageQuery {
            select_list: &select,
            from: "\"t\" AS src",
            cursor: &cursor,
            after: Some(vec![(BindAs::TextCast(ty), "a1"), (BindAs::Base64, "b1")]),
            horizon: Some((HorizonCompare::Instant, "h")),
            limit: Some("l"),
        });
        assert_eq!(
            sql,
            "SELECT src.\"a\", src.\"b\" FROM \"t\" AS src WHERE src.\"a\" IS NOT NULL AND \
             src.\"b\" IS NOT NULL AND (src.\"a\", src.\"b\") > ($1::text::\"pg_catalog\".\"int8\", \
             pg_catalog.decode($2::text, 'base64')) AND src.\"a\" < $3::timestamptz \
             ORDER BY src.\"a\", src.\"b\" LIMIT $4"
        );
        assert_eq!(values, ["a1", "b1", "h", "l"]);

        // A first read, without bound: only the NULL filter.
        let (sql, values) = Dialect::SQLITE.page_query(PageQuery {
            select_list: &select,
            from: "\"t\" AS src",
            cursor: &cursor[..1],
            after: None,
            horizon: None,
            limit: Some(10),
        });
        assert_eq!(
            sql,
            "SELECT src.\"a\", src.\"b\" FROM \"t\" AS src WHERE src.\"a\" IS NOT NULL \
             ORDER BY src.\"a\" LIMIT ?1"
        );
        assert_eq!(values, [10]);

        // A streamed read: the same without the limit.
        let (sql, values) = Dialect::MYSQL.page_query(PageQuery {
            select_list: &select,
            from: "`t` AS src",
            cursor: &cursor,
            after: Some(vec![(BindAs::Native, 1), (BindAs::Native, 2)]),
            horizon: Some((HorizonCompare::Instant, 3)),
            limit: None,
        });
        assert_eq!(
            sql,
            "SELECT src.\"a\", src.\"b\" FROM `t` AS src WHERE src.`a` IS NOT NULL AND \
             src.`b` IS NOT NULL AND src.`a` >= ? AND (src.`a`, src.`b`) > (?, ?) AND \
             src.`a` < ? ORDER BY src.`a`, src.`b`"
        );
        assert_eq!(values, [1, 1, 2, 3]);
    }

    #[test]
    fn mysql_page_query_binds_the_leading_range_again_and_decimals_exactly() {
        let select = vec!["src.`at`".to_owned(), "src.`amount`".to_owned()];
        let cursor = vec!["at".to_owned(), "amount".to_owned()];
        let (sql, values) = Dialect::MYSQL.page_query(PageQuery {
            select_list: &select,
            from: "`hr`.`per``son` AS src",
            cursor: &cursor,
            after: Some(vec![
                (BindAs::Native, "at1"),
                (BindAs::Decimal(2), "amount1"),
            ]),
            horizon: Some((HorizonCompare::Instant, "h")),
            limit: Some("l"),
        });
        assert_eq!(
            sql,
            "SELECT src.`at`, src.`amount` FROM `hr`.`per``son` AS src WHERE src.`at` IS NOT \
             NULL AND src.`amount` IS NOT NULL AND src.`at` >= ? AND (src.`at`, src.`amount`) > \
             (?, CAST(? AS DECIMAL(65, 2))) AND src.`at` < ? ORDER BY src.`at`, src.`amount` \
             LIMIT ?"
        );
        assert_eq!(values, ["at1", "at1", "amount1", "h", "l"]);
        let (sql, values) = Dialect::MYSQL.page_query(PageQuery {
            select_list: &select[..1],
            from: "(\nSELECT 1 AS at\n) AS src",
            cursor: &cursor[..1],
            after: Some(vec![(BindAs::Native, "at1")]),
            horizon: None,
            limit: Some("l"),
        });
        assert_eq!(
            sql,
            "SELECT src.`at` FROM (\nSELECT 1 AS at\n) AS src WHERE src.`at` IS NOT NULL AND \
             src.`at` > ? ORDER BY src.`at` LIMIT ?"
        );
        assert_eq!(values, ["at1", "l"]);
    }

    #[test]
    fn the_last_row_and_the_cursor_index_follow_the_cursor_order() {
        let select = vec!["src.`id`".to_owned(), "src.`at`".to_owned()];
        let cursor = vec!["at".to_owned(), "id".to_owned()];
        assert_eq!(
            Dialect::MYSQL.last_row_sql(&select, "`t` AS src", &cursor),
            "SELECT src.`id`, src.`at` FROM `t` AS src WHERE src.`at` IS NOT NULL AND \
             src.`id` IS NOT NULL ORDER BY src.`at` DESC, src.`id` DESC LIMIT 1"
        );
        let columns = vec!["updated_at".to_owned(), "id".to_owned()];
        assert_eq!(
            Dialect::POSTGRES.create_index_sql(
                "exchange_people_cursor",
                "public.people",
                &columns,
                true
            ),
            "CREATE INDEX CONCURRENTLY exchange_people_cursor ON public.people (updated_at, id);"
        );
        assert_eq!(cursor_index_name("people"), "exchange_people_cursor");
        let long = "表".repeat(30);
        let name = cursor_index_name(&long);
        assert!(name.len() <= 63 && name.ends_with("_cursor"), "{name}");
        assert!(name.starts_with("exchange_表"), "{name}");
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
