//! What the two backends share of the schema laid out in [`super`]: the tables whose text is
//! the same in both, the columns later versions added, and how a version is read and checked.

use super::SCHEMA_VERSION;

/// The tables created alike by both backends (after their own `records` and `streams`).
pub(super) const SHARED_TABLES: &str = "
CREATE TABLE IF NOT EXISTS resources (
    resource TEXT NOT NULL PRIMARY KEY,
    node     TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS hub_schema (
    version INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS catalogue (
    resource   TEXT NOT NULL PRIMARY KEY,
    node       TEXT NOT NULL,
    entry      TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
";

/// A column that a store created by an older version lacks.
pub(super) struct AddedColumn {
    /// The table it belongs to.
    pub(super) table: &'static str,
    /// Its name.
    pub(super) column: &'static str,
    /// Its type and default, as in `ALTER TABLE … ADD COLUMN`.
    pub(super) definition: &'static str,
}

/// The columns added since schema version 1, in the order they came.
pub(super) const ADDED_COLUMNS: [AddedColumn; 3] = [
    AddedColumn {
        table: "records",
        column: "stream",
        definition: "TEXT",
    },
    AddedColumn {
        table: "streams",
        column: "last_digest",
        definition: "TEXT NOT NULL DEFAULT ''",
    },
    AddedColumn {
        table: "records",
        column: "flags",
        definition: "TEXT",
    },
];

/// The version of a store without a `hub_schema` table: 1 when it has `records`, else 0 (an
/// empty database).
pub(super) fn version_before_hub_schema(has_records: bool) -> i64 {
    if has_records { 1 } else { 0 }
}

/// Refuses to migrate a store whose schema version (`found`) is newer than this hub's.
pub(super) fn refuse_newer(found: i64) -> Result<(), String> {
    if found > SCHEMA_VERSION {
        return Err(format!(
            "the store has schema version {found}, newer than this hub's {SCHEMA_VERSION}; run the newer exchange-hub"
        ));
    }
    Ok(())
}
