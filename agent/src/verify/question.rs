//! The questions of a verification request, resolved in one place for both endpoints
//! (docs/PROTOCOL.md §11.2 and §11.7): each claimed field name to exactly one configured field
//! of the resource, and each item to a subject asked about once.
//!
//! Rules, each a `400` naming the field or the items and never a subject or a value:
//! - a name that is not a field of the resource, a dropped field (never read), and the key
//!   field (the subject itself: a claim on it would tell only whether the subject is known);
//! - one spelling per field per request: names are matched without ASCII case, so `birth` and
//!   `Birth` are the same field, and a request naming it both ways (in one item or in two)
//!   would ask one question twice or make answers and MACs depend on the spelling;
//! - one item per subject per request ([`distinct`]): the subject's normalized form (clear
//!   requests) or blinded point (private set intersection) may appear once.
//!
//! So a request asks at most one question per subject and field, and the ledger
//! ([`super::ledger`]) can count each before it is answered.
//!
//! Both endpoints then read the resolved fields through [`Columns`]: requested name →
//! configured field → position in each row read.

use std::collections::HashMap;

use exchange_connectors::Selection;

use super::compare::Compare;
use crate::config::Resource;
use crate::policy::Rule;

/// A claimed field, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    /// The configured name (the column).
    pub name: String,
    /// The name as the request spells it: the key of its answers, the field of an HMAC
    /// claim's MAC and of a private set intersection claim's hash.
    pub asked_as: String,
    /// How it is compared.
    pub compare: Compare,
    /// Whether the resource lists it as enumerable.
    pub enumerable: bool,
}

/// The claimed fields of a request, and per item the fields it claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Questions {
    /// Each claimed field once, in the order first claimed.
    pub fields: Vec<Field>,
    /// Per item, in request order: indices into `fields`, in the order of the item's claims.
    pub items: Vec<Vec<usize>>,
}

/// Why a request's questions cannot be asked (`400`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unfit {
    /// Not a field of the resource.
    #[error("{}", exchange_protocol::tr!(
        "resource `{resource}` has no field `{field}`",
        "资源 `{resource}` 没有字段 `{field}`"
    ))]
    Unknown {
        /// The resource code.
        resource: String,
        /// The name as requested.
        field: String,
    },
    /// A dropped field.
    #[error("{}", exchange_protocol::tr!(
        "field `{field}` of resource `{resource}` is never read (drop), so it cannot be verified",
        "资源 `{resource}` 的字段 `{field}` 从不读取（drop），因此无法核验"
    ))]
    Dropped {
        /// The resource code.
        resource: String,
        /// The configured name.
        field: String,
    },
    /// The key field.
    #[error("{}", exchange_protocol::tr!(
        "field `{field}` is the key of resource `{resource}`: the subject each item asks about, never a claim",
        "字段 `{field}` 是资源 `{resource}` 的主键：它是每一项所询问的主体，不能作为待核验的声明"
    ))]
    Key {
        /// The resource code.
        resource: String,
        /// The configured name.
        field: String,
    },
    /// One field named two ways.
    #[error("{}", exchange_protocol::tr!(
        "field `{field}` is named both `{first}` and `{second}` in this request; names are matched without case, so use one spelling: each field is asked about once per subject",
        "字段 `{field}` 在本请求中同时写作 `{first}` 和 `{second}`；字段名不区分大小写，请只用一种写法：每个字段对每个主体只询问一次"
    ))]
    Spellings {
        /// The configured name.
        field: String,
        /// The first spelling.
        first: String,
        /// The other.
        second: String,
    },
    /// One subject in two items.
    #[error("{}", exchange_protocol::tr!(
        "items[{first}] and items[{second}] ask about the same subject; ask about a subject once per request, with every field in one item",
        "items[{first}] 和 items[{second}] 询问的是同一主体；每个请求对一个主体只询问一次，所有字段写在同一项中"
    ))]
    SameSubject {
        /// The first item.
        first: usize,
        /// The later one.
        second: usize,
    },
}

impl Questions {
    /// Resolves the claimed names of every item (`names[i]`: item `i`'s, in its order).
    pub fn resolve<S: AsRef<str>>(
        resource: &Resource,
        names: &[Vec<S>],
    ) -> Result<Questions, Unfit> {
        let mut fields: Vec<Field> = Vec::new();
        let mut items = Vec::with_capacity(names.len());
        for item in names {
            let mut at = Vec::with_capacity(item.len());
            for name in item {
                let name = name.as_ref();
                let i = match fields
                    .iter()
                    .position(|f| f.name.eq_ignore_ascii_case(name))
                {
                    Some(i) if fields[i].asked_as == name => i,
                    Some(i) => {
                        return Err(Unfit::Spellings {
                            field: fields[i].name.clone(),
                            first: fields[i].asked_as.clone(),
                            second: name.to_owned(),
                        });
                    }
                    None => {
                        fields.push(field_of(resource, name)?);
                        fields.len() - 1
                    }
                };
                at.push(i);
            }
            items.push(at);
        }
        Ok(Questions { fields, items })
    }

    /// The configured names of the claimed fields.
    pub fn names(&self) -> Vec<&str> {
        self.fields.iter().map(|f| f.name.as_str()).collect()
    }
}

/// Where the claimed fields of a request are read, for both endpoints: each requested name
/// ([`Field::asked_as`], the key of its answers and the name in its hashes) stands for one
/// configured field ([`Field::name`], the column read), which stands at one position of the
/// selection and so of every row read: the key column first ([`Columns::KEY`]), then the
/// claimed fields in the order of [`Questions::fields`] ([`Columns::position`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Columns {
    /// The key column as configured (the resource's `key` in the spelling of its field).
    pub key: String,
    /// Every column read, in row order: the key, then each claimed field's configured name.
    pub names: Vec<String>,
}

impl Columns {
    /// The position of the key column in a row read.
    pub const KEY: usize = 0;

    /// The columns `questions` reads from `resource`.
    pub fn of(resource: &Resource, questions: &Questions) -> Columns {
        let key = key_column(resource);
        let mut names = vec![key.clone()];
        names.extend(questions.fields.iter().map(|f| f.name.clone()));
        Columns { key, names }
    }

    /// The position in a row read of claimed field `field` (an index into
    /// [`Questions::fields`]).
    pub fn position(field: usize) -> usize {
        1 + field
    }

    /// The selection reading these columns of `resource`, paged by key when `by_key`.
    pub fn selection(&self, resource: &Resource, by_key: bool) -> Selection {
        Selection {
            relation: resource.relation.clone(),
            columns: self.names.clone(),
            cursor: if by_key {
                vec![self.key.clone()]
            } else {
                Vec::new()
            },
        }
    }
}

/// The key column of `resource` as configured.
fn key_column(resource: &Resource) -> String {
    resource
        .fields
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(&resource.key))
        .map(|(n, _)| n.clone())
        .unwrap_or_else(|| resource.key.clone())
}

/// The configured field `name` stands for, if it may be claimed.
fn field_of(resource: &Resource, name: &str) -> Result<Field, Unfit> {
    let code = || resource.code.clone();
    let Some((configured, rule)) = resource
        .fields
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
    else {
        return Err(Unfit::Unknown {
            resource: code(),
            field: name.to_owned(),
        });
    };
    if *rule == Rule::Drop {
        return Err(Unfit::Dropped {
            resource: code(),
            field: configured.clone(),
        });
    }
    if configured.eq_ignore_ascii_case(&resource.key) {
        return Err(Unfit::Key {
            resource: code(),
            field: configured.clone(),
        });
    }
    Ok(Field {
        name: configured.clone(),
        asked_as: name.to_owned(),
        compare: resource.verification.compare_of(configured),
        enumerable: resource.verification.is_enumerable(configured),
    })
}

/// Refuses a request whose items repeat a subject (by `same`, e.g. the normalized
/// identifier or the blinded point).
pub fn distinct<T: std::hash::Hash + Eq>(subjects: &[T]) -> Result<(), Unfit> {
    let mut seen: HashMap<&T, usize> = HashMap::with_capacity(subjects.len());
    for (i, s) in subjects.iter().enumerate() {
        if let Some(first) = seen.insert(s, i) {
            return Err(Unfit::SameSubject { first, second: i });
        }
    }
    Ok(())
}
