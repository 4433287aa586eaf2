//! Sqlite connector (placeholder until implemented).

use async_trait::async_trait;

use crate::{
    ColumnInfo, Connector, ConnectorError, Page, PageRequest, Probe, Selection, SourceSpec,
};

/// Reads a Sqlite source.
pub struct SqliteConnector {
    name: String,
}

impl SqliteConnector {
    /// Prepares a connector; connects lazily.
    pub fn new(spec: &SourceSpec) -> Result<Self, ConnectorError> {
        Ok(Self {
            name: spec.name.clone(),
        })
    }

    fn unimplemented(&self) -> ConnectorError {
        ConnectorError::Config {
            source_name: self.name.clone(),
            reason: "not implemented yet".into(),
        }
    }
}

#[async_trait]
impl Connector for SqliteConnector {
    fn name(&self) -> &str {
        &self.name
    }

    async fn probe(&self) -> Result<Probe, ConnectorError> {
        Err(self.unimplemented())
    }

    async fn describe(&self, _selection: &Selection) -> Result<Vec<ColumnInfo>, ConnectorError> {
        Err(self.unimplemented())
    }

    async fn read_page(&self, _request: &PageRequest<'_>) -> Result<Page, ConnectorError> {
        Err(self.unimplemented())
    }
}
