//! Finds the line of a key path (`resources[2].cursor`) in the TOML text, so validation
//! errors can point at it like parse errors do.

use toml_edit::{Document, Item};

/// A parsed document that can locate key paths.
pub struct Locator {
    text: String,
    doc: Option<Document<String>>,
}

/// 1-based line and column of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rsplit('\n')
        .next()
        .map(|l| l.chars().count())
        .unwrap_or(0)
        + 1;
    (line, col)
}

impl Locator {
    /// Parses the text (a parse failure just means no locations).
    pub fn new(text: &str) -> Self {
        Locator {
            text: text.to_owned(),
            doc: Document::parse(text.to_owned()).ok(),
        }
    }

    /// Line and column of the key path, or of its nearest existing ancestor.
    pub fn locate(&self, path: &str) -> Option<(usize, usize)> {
        enum Node<'a> {
            Table(&'a dyn toml_edit::TableLike),
            Array(&'a toml_edit::ArrayOfTables),
            Leaf,
        }
        let doc = self.doc.as_ref()?;
        let mut best = None;
        let mut cur = Node::Table(doc.as_table());
        for seg in segments(path) {
            match (seg, cur) {
                (Seg::Key(k), Node::Table(t)) => {
                    let Some((key, item)) = t.get_key_value(k) else {
                        break;
                    };
                    if let Some(span) = key.span() {
                        best = Some(span.start);
                    }
                    cur = match item {
                        Item::ArrayOfTables(a) => Node::Array(a),
                        other => match other.as_table_like() {
                            Some(t) => Node::Table(t),
                            None => Node::Leaf,
                        },
                    };
                }
                (Seg::Index(i), Node::Array(a)) => {
                    let Some(t) = a.get(i) else { break };
                    if let Some(span) = t.span() {
                        best = Some(span.start);
                    }
                    cur = Node::Table(t);
                }
                _ => break,
            }
        }
        best.map(|o| line_col(&self.text, o))
    }
}

#[derive(Clone, Copy)]
enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

fn segments(path: &str) -> impl Iterator<Item = Seg<'_>> {
    path.split('.').flat_map(|part| {
        let mut out = Vec::new();
        let (name, rest) = part
            .split_once('[')
            .map(|(n, r)| (n, Some(r)))
            .unwrap_or((part, None));
        if !name.is_empty() {
            out.push(Seg::Key(name));
        }
        if let Some(rest) = rest {
            for idx in rest.split('[') {
                if let Ok(i) = idx.trim_end_matches(']').parse() {
                    out.push(Seg::Index(i));
                }
            }
        }
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_paths_are_located_in_arrays_of_tables() {
        let text = "[node]\nid = \"a\"\n\n[[resources]]\ncode = \"x\"\n\n[[resources]]\ncode = \"y\"\ncursor = []\n[resources.fields]\nname = \"mask\"\n";
        let l = Locator::new(text);
        assert_eq!(l.locate("node.id"), Some((2, 1)));
        assert_eq!(l.locate("resources[1].cursor"), Some((9, 1)));
        assert_eq!(l.locate("resources[1].fields.name"), Some((11, 1)));
        assert_eq!(l.locate("resources[0].code"), Some((5, 1)));
    }
}
