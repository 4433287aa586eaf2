//! The source tables the scenarios read. Both databases hold the same ones, loaded from the
//! same generated rows:
//!
//! | table | rows | indexes |
//! |---|---|---|
//! | `residents` | `--rows` | primary key `id_card`, and `(updated_at, id_card)`: the cursor's order |
//! | `residents_noindex` | the same rows | the primary key alone, as most business tables have |
//! | `residents_scale` | the first `--scale-rows` | as `residents` |
//! | `residents_noindex_scale` | the first `--scale-rows` | as `residents_noindex` |
//!
//! A scenario over a table other than `residents` carries the table's suffix in its name
//! (`agent-pg-noindex`, `agent-pg-scale`).

use super::Options;

/// One table of the source databases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct SourceTable {
    /// Its name in both databases.
    pub(super) name: &'static str,
    /// Whether `(updated_at, id_card)` has an index (the primary key `id_card` always has one).
    pub(super) cursor_index: bool,
    /// Whether it holds the first `--scale-rows` rows rather than all `--rows`.
    pub(super) scale: bool,
}

/// The table every other one is copied from.
pub(super) const INDEXED: SourceTable = SourceTable {
    name: "residents",
    cursor_index: true,
    scale: false,
};

/// The same rows with the primary key alone.
pub(super) const NO_INDEX: SourceTable = SourceTable {
    name: "residents_noindex",
    cursor_index: false,
    scale: false,
};

/// The first `--scale-rows` rows, indexed as [`INDEXED`].
pub(super) const INDEXED_SCALE: SourceTable = SourceTable {
    name: "residents_scale",
    cursor_index: true,
    scale: true,
};

/// The first `--scale-rows` rows, with the primary key alone.
pub(super) const NO_INDEX_SCALE: SourceTable = SourceTable {
    name: "residents_noindex_scale",
    cursor_index: false,
    scale: true,
};

/// Every table, [`INDEXED`] first (the others are copied from it).
pub(super) const ALL: [SourceTable; 4] = [INDEXED, NO_INDEX, INDEXED_SCALE, NO_INDEX_SCALE];

/// The table the scenario `name` reads (by its name's suffix).
pub(super) fn read_by(name: &str) -> SourceTable {
    match (name.contains("-noindex"), name.ends_with("-scale")) {
        (false, false) => INDEXED,
        (true, false) => NO_INDEX,
        (false, true) => INDEXED_SCALE,
        (true, true) => NO_INDEX_SCALE,
    }
}

impl SourceTable {
    /// What the names of the scenarios over this table end with.
    pub(super) fn suffix(self) -> &'static str {
        match (self.cursor_index, self.scale) {
            (true, false) => "",
            (false, false) => "-noindex",
            (true, true) => "-scale",
            (false, true) => "-noindex-scale",
        }
    }

    /// Its rows in this run.
    pub(super) fn rows(self, options: &Options) -> u64 {
        match (self.scale, options.scale_rows()) {
            (true, Some(n)) => n.min(options.rows),
            _ => options.rows,
        }
    }

    /// How the table differs from `residents`, for the description of a scenario.
    pub(super) fn describe(self, options: &Options) -> String {
        let index = if self.cursor_index {
            ""
        } else {
            ", no cursor index"
        };
        let rows = if self.scale {
            format!(", first {} rows", self.rows(options))
        } else {
            String::new()
        };
        if index.is_empty() && rows.is_empty() {
            String::new()
        } else {
            format!(" ({})", format!("{index}{rows}").trim_start_matches(", "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_scenario_reads_the_table_its_name_says() {
        for table in ALL {
            for name in ["agent-pg", "agent-pg-ack", "sling-mariadb", "pg-copy-pipe"] {
                if table.scale && name != "agent-pg" {
                    continue;
                }
                let scenario = match name.strip_suffix("-ack") {
                    Some(base) => format!("{base}{}-ack", table.suffix()),
                    None => format!("{name}{}", table.suffix()),
                };
                assert_eq!(read_by(&scenario), table, "{scenario}");
            }
        }
        assert_eq!(read_by("incremental"), INDEXED);
    }
}
