//! What finds a quarantined row at its source: the values of the resource's locator columns,
//! as text (`id=123, updated_at=2026-12-01T10:00:00`). Configuration validation lets only
//! columns whose values are kept in clear anyway be locator columns (plain fields, cursor
//! columns, never a hidden key: `config::row_locator`); the text stays on this machine, in the
//! quarantine entry.

use exchange_connectors::{Row, Value};

use super::Plan;

/// Characters of one value kept in a locator; a longer value is cut, marked `…`.
const MAX_VALUE_CHARS: usize = 64;

/// The locator columns as indexes into the selected columns. Only columns already selected
/// are used: a locator never makes the plan read another column.
pub(super) fn columns(locator: &[String], selected: &[String]) -> Vec<(String, usize)> {
    locator
        .iter()
        .filter_map(|name| {
            let index = selected.iter().position(|c| c.eq_ignore_ascii_case(name))?;
            Some((name.clone(), index))
        })
        .collect()
}

impl Plan {
    /// The row's locator text, `None` when the resource records none. A NULL value is written
    /// `NULL`, one that cannot be converted `?`.
    pub fn locator_of(&self, row: &Row) -> Option<String> {
        if self.locator.is_empty() {
            return None;
        }
        let parts: Vec<String> = self
            .locator
            .iter()
            .map(|(name, i)| {
                let value = match row.values.get(*i) {
                    Some(Ok(Value::Null)) => "NULL".to_owned(),
                    Some(Ok(v)) => shown(&v.to_text().unwrap_or_else(|| v.to_json().to_string())),
                    Some(Err(_)) | None => "?".to_owned(),
                };
                format!("{name}={value}")
            })
            .collect();
        Some(parts.join(", "))
    }
}

/// A value as a locator shows it: cut to [`MAX_VALUE_CHARS`]; quoted (JSON) when it could be
/// misread (empty, separators, surrounding spaces, control characters).
fn shown(text: &str) -> String {
    let cut: String = match text.char_indices().nth(MAX_VALUE_CHARS) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    };
    let ambiguous = cut.is_empty()
        || cut.trim() != cut
        || cut
            .chars()
            .any(|c| c.is_control() || matches!(c, ',' | '=' | '"'));
    if ambiguous {
        serde_json::to_string(&cut).expect("a string serializes")
    } else {
        cut
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_shown_as_text_and_quoted_where_they_could_be_misread() {
        for (value, expected) in [
            ("123", "123"),
            ("2026-12-01T10:00:00", "2026-12-01T10:00:00"),
            ("", "\"\""),
            (" padded", "\" padded\""),
            ("a, b=c", "\"a, b=c\""),
            ("line\nbreak", "\"line\\nbreak\""),
            ("王五", "王五"),
        ] {
            assert_eq!(shown(value), expected, "{value:?}");
        }
        let long = "x".repeat(100);
        assert_eq!(shown(&long), format!("{}…", "x".repeat(64)));
    }

    #[test]
    fn only_selected_columns_locate_a_row() {
        let selected = ["id_no".to_owned(), "ID".to_owned(), "updated_at".to_owned()];
        assert_eq!(
            columns(
                &[
                    "id".to_owned(),
                    "missing".to_owned(),
                    "updated_at".to_owned()
                ],
                &selected
            ),
            [("id".to_owned(), 1), ("updated_at".to_owned(), 2)]
        );
    }
}
