//! The file drop source (`kind = "files"`): a directory where a department's systems drop CSV,
//! JSON Lines or XLSX files, one subdirectory per resource.
//!
//! Layout of a resource's directory (`<path>/<directory>/`):
//! - dropped files, read oldest first (last change: the later of modification and
//!   status-change time, then name) once complete
//!   ([`Ready`]); names starting with `.` and `NAME.done` markers are not data;
//! - `done/`: files whose rows are all in the queue;
//! - `rejected/`: files that cannot be read at all, each with `NAME.reason` beside it.
//!
//! This module reads files ([`read`]) and keeps the directory ([`drop`]); which file was read
//! how far, and that its rows and that progress commit together, is the agent's queue
//! (`agent/src/pipeline/pull/files.rs`). Invariants: only the fields a resource names are
//! decoded; reasons name files, lines and columns, never a value; a file is never changed in
//! place, only moved (or, with `delete_after`, deleted from `done/`).

pub mod convert;
pub mod drop;
pub mod read;

use std::path::PathBuf;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use exchange_protocol::tr;

use crate::{
    ColumnInfo, Connector, ConnectorError, Found, Page, PageRequest, Probe, Selection, SourceSpec,
};

/// A field's declared type (`[resources.fields] f = { rule = …, type = "date" }`): what the
/// text of a file's cell is read as. A database says its columns' types; a file does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FieldType {
    /// Text as written (the default).
    #[default]
    Text,
    /// A signed 64-bit integer.
    Int,
    /// An exact decimal, kept as written.
    Decimal,
    /// A floating-point number.
    Float,
    /// true/false (1/0, 是/否).
    Bool,
    /// A calendar date.
    Date,
    /// A date and time without zone.
    Timestamp,
    /// A date and time with its offset (RFC 3339).
    TimestampTz,
    /// A JSON document.
    Json,
}

impl FieldType {
    /// Every type by its configuration name.
    pub const ALL: [(&'static str, FieldType); 9] = [
        ("text", FieldType::Text),
        ("int", FieldType::Int),
        ("decimal", FieldType::Decimal),
        ("float", FieldType::Float),
        ("bool", FieldType::Bool),
        ("date", FieldType::Date),
        ("timestamp", FieldType::Timestamp),
        ("timestamptz", FieldType::TimestampTz),
        ("json", FieldType::Json),
    ];

    /// The type named `name` in a configuration.
    pub fn parse(name: &str) -> Option<FieldType> {
        Self::ALL.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
    }

    /// Its configuration name.
    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, t)| *t == self)
            .map_or("text", |(n, _)| n)
    }
}

/// A dropped file's format, by its extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    /// `.csv`: a header row, then rows (RFC 4180 quoting).
    Csv,
    /// `.jsonl` or `.ndjson`: one JSON object per line.
    JsonLines,
    /// `.xlsx`: the first worksheet, its first row the header.
    Xlsx,
}

impl FileFormat {
    /// The format of a file named `name`, `None` for an extension that is none of these.
    pub fn of(name: &str) -> Option<FileFormat> {
        let ext = name.rsplit_once('.')?.1.to_ascii_lowercase();
        match ext.as_str() {
            "csv" => Some(FileFormat::Csv),
            "jsonl" | "ndjson" => Some(FileFormat::JsonLines),
            "xlsx" => Some(FileFormat::Xlsx),
            _ => None,
        }
    }
}

/// How a text file is decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TextEncoding {
    /// UTF-8 when the file starts with a byte-order mark or all of it is UTF-8, GB18030
    /// otherwise (the default).
    #[default]
    Auto,
    /// UTF-8.
    Utf8,
    /// GB18030, which includes GBK and GB2312: what Chinese office software writes by default.
    Gb18030,
}

impl TextEncoding {
    /// The encoding named in a configuration: `auto`, `utf-8`, `gbk`, `gb18030`, `gb2312`.
    pub fn parse(name: &str) -> Option<TextEncoding> {
        match name.to_ascii_lowercase().as_str() {
            "auto" => Some(TextEncoding::Auto),
            "utf-8" | "utf8" => Some(TextEncoding::Utf8),
            "gbk" | "gb18030" | "gb2312" => Some(TextEncoding::Gb18030),
            _ => None,
        }
    }

    /// Its name in messages.
    pub fn name(self) -> &'static str {
        match self {
            TextEncoding::Auto => "auto",
            TextEncoding::Utf8 => "UTF-8",
            TextEncoding::Gb18030 => "GBK/GB18030",
        }
    }
}

/// When a dropped file counts as complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ready {
    /// Its size and modification time did not change for this long (seen by two looks at
    /// least this far apart).
    Stable(std::time::Duration),
    /// A marker `NAME.done` exists beside it (removed when the file is moved).
    Marker,
}

/// Why a file cannot be read at all (it goes to `rejected/` with this reason).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FileError {
    /// The file cannot be opened or read.
    #[error("{}", tr!("cannot read the file: {reason}", "无法读取该文件：{reason}"))]
    Io {
        /// The operating system's reason.
        reason: String,
    },
    /// The file is not in its format, or lacks a column.
    #[error("{0}")]
    Malformed(String),
}

impl FileError {
    /// An I/O error, in the reader's language.
    pub fn io(e: std::io::Error) -> FileError {
        FileError::Io {
            reason: exchange_protocol::translate::io(&e),
        }
    }
}

/// The connector of a file drop: what the agent's checks and catalogue ask of every source.
/// Rows are read by the agent's file pull ([`read::FileReader`]), not by pages.
pub struct FilesConnector {
    name: String,
    root: PathBuf,
}

impl FilesConnector {
    /// The drop at `spec.url` (a directory path).
    pub fn new(spec: &SourceSpec) -> FilesConnector {
        FilesConnector {
            name: spec.name.clone(),
            root: PathBuf::from(&spec.url),
        }
    }

    fn refused(&self, what: String) -> ConnectorError {
        ConnectorError::Config {
            source_name: self.name.clone(),
            reason: what,
        }
    }
}

#[async_trait]
impl Connector for FilesConnector {
    fn name(&self) -> &str {
        &self.name
    }

    async fn probe(&self) -> Result<Probe, ConnectorError> {
        let root = self.root.display();
        match std::fs::metadata(&self.root) {
            Ok(m) if m.is_dir() => Ok(Probe {
                server: tr!("file drop {root}", "文件交换目录 {root}"),
                sees_open_transactions: true,
                missing_privilege: None,
                replica: None,
            }),
            Ok(_) => Err(self.refused(tr!("{root} is not a directory", "{root} 不是目录"))),
            Err(e) => Err(ConnectorError::Unreachable {
                source_name: self.name.clone(),
                address: root.to_string(),
                reason: exchange_protocol::translate::io(&e),
            }),
        }
    }

    async fn clock(&self) -> Result<DateTime<Utc>, ConnectorError> {
        Ok(Utc::now())
    }

    /// The fields a resource names, as declared (a file says nothing of types).
    async fn describe(&self, selection: &Selection) -> Result<Vec<ColumnInfo>, ConnectorError> {
        Ok(selection
            .columns
            .iter()
            .map(|c| ColumnInfo {
                name: c.clone(),
                source_type: "file".into(),
                nullable: None,
            })
            .collect())
    }

    async fn read_page(&self, _: &PageRequest<'_>) -> Result<Page, ConnectorError> {
        Err(self.refused(tr!(
            "a file drop is read file by file, not by pages",
            "文件交换目录按文件读取，不按页读取"
        )))
    }

    async fn lookup(&self, _: &Selection, _: &str, _: &[crate::Value]) -> Found {
        Err(self.refused(tr!(
            "verification cannot look rows up in a file drop",
            "核验无法在文件交换目录中查找记录"
        )))
    }
}
