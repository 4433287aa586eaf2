//! The catalogue entries the agent reports to the hub (docs/PROTOCOL.md §10): for every
//! configured resource its code, name, share class and the names and source types of the
//! fields that are not dropped — never a value. For a `none` (不予共享) resource this is all
//! that ever reaches the hub. Types come from the source's catalogue (`describe`), so an
//! entry is sent once its source is reachable.

use exchange_connectors::{Connector, Selection};
use exchange_protocol::catalogue::{CatalogueEntry, CatalogueField};

use crate::config::Resource;
use crate::policy::Rule;

/// The entry of `resource`, its field types read from `connector`.
pub async fn entry(
    resource: &Resource,
    connector: &dyn Connector,
) -> Result<CatalogueEntry, String> {
    let names: Vec<String> = resource
        .fields
        .iter()
        .filter(|(_, r)| *r != Rule::Drop)
        .map(|(n, _)| n.clone())
        .collect();
    let selection = Selection {
        relation: resource.relation.clone(),
        columns: names.clone(),
        cursor: Vec::new(),
    };
    let described = connector
        .describe(&selection)
        .await
        .map_err(|e| e.to_string())?;
    let fields = names
        .into_iter()
        .map(|name| {
            let source_type = described
                .iter()
                .find(|c| c.name.eq_ignore_ascii_case(&name))
                .map(|c| c.source_type.clone())
                .unwrap_or_default();
            CatalogueField { name, source_type }
        })
        .collect();
    Ok(CatalogueEntry {
        resource: resource.code.clone(),
        name: resource.name.clone(),
        share: resource.share.as_str().to_owned(),
        fields,
    })
}
