//! Plans: what the connector learned about a selection — every selected column resolved
//! against the catalogue (default deny), its type and how it is read — and how values are bound
//! back in the column's own type.

use super::*;

/// Identifies a selection's plan: relation kind, relation text, columns.
pub(super) type PlanKey = (bool, String, Vec<String>);

pub(super) fn plan_key(selection: &Selection) -> PlanKey {
    let (is_query, text) = match &selection.relation {
        Relation::Table(t) => (false, t.clone()),
        Relation::Query(q) => (true, q.clone()),
    };
    (is_query, text, selection.columns.clone())
}

/// What the connector learned about a selection by preparing it.
pub(super) struct Plan {
    /// One entry per selected column, in selection order.
    pub(super) columns: Vec<PlanColumn>,
    /// The select list, with the casts of [`Read`].
    pub(super) select_list: Vec<String>,
    /// The `FROM` item.
    pub(super) from: String,
}

/// One selected column of a plan.
pub(super) struct PlanColumn {
    /// The column's name as selected.
    pub(super) name: String,
    /// Its PostgreSQL type.
    pub(super) pg_type: Type,
    /// How its value is read.
    pub(super) read: Read,
    /// Whether it may hold NULL: `Some` for table columns, `None` for view and query columns.
    pub(super) nullable: Option<bool>,
}

/// The selected columns as found in the catalogue (default deny).
pub(super) struct Catalogue {
    /// The table's or view's oid; `None` for a query.
    pub(super) oid: Option<u32>,
    /// One entry per selected column, in selection order.
    pub(super) columns: Vec<Resolved>,
}

/// One selected column found in the catalogue.
pub(super) struct Resolved {
    /// Its attribute number in the table or view; `None` for a query column.
    pub(super) attnum: Option<i16>,
    /// Whether it may hold NULL, when the catalogue says (tables only).
    pub(super) nullable: Option<bool>,
}

/// The columns of a table or view (`$1`: its quoted, possibly schema-qualified name, resolved
/// with the session's `search_path` like the page query).
pub(super) const COLUMNS_SQL: &str = "SELECT c.oid, c.relkind::text, a.attname::text, \
     a.attnum, a.attnotnull, \
     (SELECT t.typname::text FROM pg_catalog.pg_type t WHERE t.oid = a.atttypid) \
     FROM pg_catalog.pg_class c \
     JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
     WHERE c.oid = pg_catalog.to_regclass($1)";

/// How a column is read and converted (the module's type mapping).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Read {
    Bool,
    Int2,
    Int4,
    Int8,
    Oid,
    Float4,
    Float8,
    /// Selected `::text`.
    Numeric,
    Text,
    Date,
    Timestamp,
    TimestampTz,
    Bytes,
    /// Selected `::text`, parsed as JSON.
    Json,
    /// Selected `::text`, kept as text.
    CastText,
}

impl Read {
    pub(super) fn for_type(t: &Type) -> Read {
        const DIRECT: &[(Type, Read)] = &[
            (Type::BOOL, Read::Bool),
            (Type::INT2, Read::Int2),
            (Type::INT4, Read::Int4),
            (Type::INT8, Read::Int8),
            (Type::OID, Read::Oid),
            (Type::FLOAT4, Read::Float4),
            (Type::FLOAT8, Read::Float8),
            (Type::NUMERIC, Read::Numeric),
            (Type::TEXT, Read::Text),
            (Type::VARCHAR, Read::Text),
            (Type::BPCHAR, Read::Text),
            (Type::NAME, Read::Text),
            (Type::DATE, Read::Date),
            (Type::TIMESTAMP, Read::Timestamp),
            (Type::TIMESTAMPTZ, Read::TimestampTz),
            (Type::BYTEA, Read::Bytes),
            (Type::JSON, Read::Json),
            (Type::JSONB, Read::Json),
        ];
        DIRECT
            .iter()
            .find(|(ty, _)| ty == t)
            .map_or(Read::CastText, |(_, read)| *read)
    }

    /// Whether the select list reads the column as `::text`.
    pub(super) fn selects_text(self) -> bool {
        matches!(self, Read::Numeric | Read::Json | Read::CastText)
    }
}

/// Default deny, second check: each result column of the prepared probe must be the
/// relation's own column of the selected name (a function over the row, `name(src)`, has no
/// origin).
fn check_origins(
    selection: &Selection,
    columns: &[tokio_postgres::Column],
    catalogue: &Catalogue,
) -> Result<(), Failure> {
    for ((name, column), resolved) in selection
        .columns
        .iter()
        .zip(columns)
        .zip(&catalogue.columns)
    {
        let origin_ok = match (catalogue.oid, resolved.attnum) {
            (Some(oid), Some(attnum)) => {
                column.table_oid() == Some(oid) && column.column_id() == Some(attnum)
            }
            _ => true,
        };
        if column.name() != name || !origin_ok {
            return Err(Failure::Config(format!(
                "column `{name}` does not read the relation's own column of that name; \
                 it is refused (only columns of the table or query may be read)"
            )));
        }
    }
    Ok(())
}

impl PostgresConnector {
    /// The plan of a selection, prepared on `session` unless known.
    pub(super) async fn plan(
        &self,
        session: &mut Session,
        selection: &Selection,
    ) -> Result<Arc<Plan>, Failure> {
        let key = plan_key(selection);
        if let Some(plan) = self.known_plan(session, selection, &key).await? {
            return Ok(plan);
        }
        let plan = Arc::new(self.prepare_plan(session, selection).await?);
        self.plans
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key, plan.clone());
        Ok(plan)
    }

    /// The plan known for `key`, if it still holds. The table may have changed since it was
    /// made (a column dropped, a function of the same name created, a NOT NULL dropped): its
    /// columns are resolved again, one cheap catalogue query, and the plan is made again if
    /// their nullability changed (it decides which rows `null_cursor_rows` counts).
    async fn known_plan(
        &self,
        session: &mut Session,
        selection: &Selection,
        key: &PlanKey,
    ) -> Result<Option<Arc<Plan>>, Failure> {
        let cached = self
            .plans
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .cloned();
        let Some(plan) = cached else {
            return Ok(None);
        };
        let same = match selection.relation {
            Relation::Table(_) => {
                let now = self.resolve(session, selection).await?;
                now.columns
                    .iter()
                    .map(|c| c.nullable)
                    .eq(plan.columns.iter().map(|c| c.nullable))
            }
            Relation::Query(_) => true,
        };
        Ok(same.then_some(plan))
    }

    /// Makes the plan of a selection: resolves its columns in the catalogue and prepares its
    /// probe, which must return exactly the relation's own columns of those names.
    async fn prepare_plan(
        &self,
        session: &mut Session,
        selection: &Selection,
    ) -> Result<Plan, Failure> {
        if selection.columns.is_empty() {
            return Err(Failure::Config("the selection reads no column".into()));
        }
        let refs: Vec<String> = SQL.column_refs(&selection.columns);
        let from = SQL.relation_sql(&selection.relation);
        let catalogue = self.resolve(session, selection).await?;
        let probe = SQL.describe_sql(selection);
        let statement = session.client.prepare(&probe).await?;
        if statement.columns().len() != selection.columns.len() {
            return Err(Failure::Statement(format!(
                "the relation returned {} columns for {} selected",
                statement.columns().len(),
                selection.columns.len()
            )));
        }
        check_origins(selection, statement.columns(), &catalogue)?;
        let columns: Vec<PlanColumn> = selection
            .columns
            .iter()
            .zip(statement.columns())
            .zip(catalogue.columns)
            .map(|((name, column), resolved)| PlanColumn {
                name: name.clone(),
                pg_type: column.type_().clone(),
                read: Read::for_type(column.type_()),
                nullable: resolved.nullable,
            })
            .collect();
        let select_list = columns
            .iter()
            .zip(refs)
            .map(|(c, r)| {
                if c.read.selects_text() {
                    format!("{r}::text")
                } else {
                    r
                }
            })
            .collect();
        Ok(Plan {
            columns,
            select_list,
            from,
        })
    }

    /// Resolves every selected column against the catalogue: the table's or view's own
    /// attributes, or the query's output columns. A name that is not one of them is refused
    /// ([`Failure::Config`]) whatever PostgreSQL would make of it (`src.name` is the
    /// function call `name(src)` when the relation has no column `name`).
    pub(super) async fn resolve(
        &self,
        session: &mut Session,
        selection: &Selection,
    ) -> Result<Catalogue, Failure> {
        match &selection.relation {
            Relation::Table(table) => {
                let statement = session.prepare(COLUMNS_SQL).await?;
                let rows = session
                    .client
                    .query(&statement, &[&SQL.table_name(table)])
                    .await?;
                if rows.is_empty() {
                    // No such relation: preparing a query of it names it.
                    session
                        .client
                        .prepare(&SQL.output_columns_sql(&selection.relation))
                        .await?;
                }
                let mut oid = None;
                let mut found = Vec::with_capacity(rows.len());
                let mut attnums = Vec::with_capacity(rows.len());
                for row in &rows {
                    oid = Some(row.try_get::<_, u32>(0)?);
                    let kind: String = row.try_get(1)?;
                    let not_null: bool = row.try_get(4)?;
                    attnums.push(row.try_get::<_, i16>(3)?);
                    found.push(ColumnMeta {
                        name: row.try_get(2)?,
                        source_type: row.try_get::<_, Option<String>>(5)?.unwrap_or_default(),
                        // Only a table's NOT NULL is a promise; a view's columns say nothing.
                        nullable: matches!(kind.as_str(), "r" | "p").then_some(!not_null),
                    });
                }
                let resolved = SQL
                    .resolve_columns(selection, &found, &format!("table `{table}`"))
                    .map_err(Failure::Config)?;
                let columns = resolved
                    .into_iter()
                    .map(|meta| Resolved {
                        attnum: found
                            .iter()
                            .position(|f| f.name == meta.name)
                            .map(|i| attnums[i]),
                        nullable: meta.nullable,
                    })
                    .collect();
                Ok(Catalogue { oid, columns })
            }
            Relation::Query(_) => {
                let statement = session
                    .client
                    .prepare(&SQL.output_columns_sql(&selection.relation))
                    .await?;
                let found: Vec<ColumnMeta> = statement
                    .columns()
                    .iter()
                    .map(|c| ColumnMeta {
                        name: c.name().to_owned(),
                        source_type: c.type_().name().to_owned(),
                        nullable: None,
                    })
                    .collect();
                let columns = SQL
                    .resolve_columns(selection, &found, "the query's output")
                    .map_err(Failure::Config)?
                    .into_iter()
                    .map(|_| Resolved {
                        attnum: None,
                        nullable: None,
                    })
                    .collect();
                Ok(Catalogue { oid: None, columns })
            }
        }
    }
}

impl PlanColumn {
    /// How a value compared with this column is bound (`ty`: [`type_sql`] of its type).
    pub(super) fn bind_as<'a>(&self, ty: &'a str) -> BindAs<'a> {
        if self.read == Read::Bytes {
            BindAs::Base64
        } else {
            BindAs::TextCast(ty)
        }
    }
}

/// A value as the text PostgreSQL parses back into the column's type (`bytea` as base64, to
/// be decoded by the statement); `None` for NULL.
pub(super) fn bind_text(value: &Value) -> Option<String> {
    match value {
        Value::Json(j) => serde_json::to_string(j).ok(),
        other => other.to_text(),
    }
}

/// A type's name for a cast, schema-qualified and quoted: `"pg_catalog"."int4"`.
pub(super) fn type_sql(t: &Type) -> String {
    format!(
        "{}.{}",
        SQL.quote_ident(t.schema()),
        SQL.quote_ident(t.name())
    )
}
