//! Offline exchange (离线交换, docs/PROTOCOL.md §12): a batch and the hub's answer to it as
//! self-contained files, carried through a one-way gateway (网闸) or on removable media
//! instead of an HTTPS request and its response.
//!
//! Format (the same for both kinds, [`Kind`]):
//! - a first line naming the kind and version: `exchange-offline-batch 1` or
//!   `exchange-offline-answer 1`;
//! - header lines `name: value`, each ended by `\n` (no CR): names lower-case ASCII letters,
//!   digits and `-`; values printable ASCII (0x20–0x7E) without leading or trailing spaces;
//!   a name may repeat only for `exchange-certificate`;
//! - an empty line, then exactly `content-length` bytes of body, and nothing after them.
//!
//! A batch file holds the online request's headers (docs/PROTOCOL.md §4.1, the signature of
//! §4.7 required), its body as sent online (zstd NDJSON), and the node's certificate chain as
//! `exchange-certificate` lines (base64 of DER, leaf first): with no TLS connection, the
//! chain is how the hub learns who signed. An answer file holds the batch's identity and
//! digest, the HTTP status the hub's online endpoint would have answered
//! (`exchange-answer-status`) with its JSON body (§7), the body's SM3
//! (`exchange-answer-sm3`), and the hub's signature over [`Answered::message`] with the hub's
//! certificate chain: the agent reads it exactly as it reads the online answer.
//!
//! Invariants: a file is written under a temporary name beginning with `.`, synced, then
//! renamed into place and the directory synced ([`write_atomic`]), so a reader never sees
//! half a file and readers skip names beginning with `.`; names are informative only (what
//! a file is comes from its signed content).

use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine;
use rustls::pki_types::CertificateDer;

use crate::batch::BatchId;

/// Largest header section read (certificates included).
pub const MAX_HEAD_BYTES: usize = 256 * 1024;
/// The header carrying one certificate of the signer's chain (base64 of DER), leaf first.
pub const CERTIFICATE: &str = "exchange-certificate";
/// The header of a batch file carrying the node's signature over the whole file
/// ([`OfflineFile::file_message`]): with no TLS connection around it, every header (the
/// baseline mark, the encoding) must be the node's own, not only those of the batch signature.
pub const FILE_SIGNATURE: &str = "exchange-file-signature";
/// The header of an answer file carrying the HTTP status the hub answered.
pub const ANSWER_STATUS: &str = "exchange-answer-status";
/// The header of an answer file carrying the SM3 (hex) of the batch file it answers, as the
/// hub read it: each writing of a batch is a different file (its signatures differ), so the
/// agent can tell an answer to its latest writing from one to an older (docs/PROTOCOL.md
/// §12.5).
pub const BATCH_FILE_SM3: &str = "exchange-batch-file-sm3";
/// The header of an answer file carrying the SM3 (hex) of its body.
pub const ANSWER_SM3: &str = "exchange-answer-sm3";
/// File name extension of a batch file.
pub const BATCH_EXTENSION: &str = "exchange-batch";
/// File name extension of an answer file.
pub const ANSWER_EXTENSION: &str = "exchange-answer";

/// What a file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A batch, from an agent to the hub.
    Batch,
    /// The hub's answer to a batch.
    Answer,
}

impl Kind {
    /// The first line of a file of this kind.
    fn magic(self) -> &'static str {
        match self {
            Kind::Batch => "exchange-offline-batch 1",
            Kind::Answer => "exchange-offline-answer 1",
        }
    }
}

/// Why a file cannot be read as an offline exchange file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OfflineError {
    /// Not a file of the expected kind and form.
    #[error("{}", crate::tr!(
        "not an offline exchange file (docs/PROTOCOL.md §12): {reason}",
        "不是离线交换文件（docs/PROTOCOL.md §12）：{reason}"
    ))]
    Malformed {
        /// What is wrong.
        reason: String,
    },
}

fn malformed(reason: String) -> OfflineError {
    OfflineError::Malformed { reason }
}

/// One offline file: its kind, header lines in order and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfflineFile {
    /// Batch or answer.
    pub kind: Kind,
    /// Header lines in file order, `content-length` excluded (it is written from the body).
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl OfflineFile {
    /// The file's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.body.len() + 4096);
        out.extend_from_slice(self.kind.magic().as_bytes());
        out.push(b'\n');
        for (name, value) in &self.headers {
            out.extend_from_slice(format!("{name}: {value}\n").as_bytes());
        }
        out.extend_from_slice(format!("content-length: {}\n\n", self.body.len()).as_bytes());
        out.extend_from_slice(&self.body);
        out
    }

    /// Reads a file of `kind` (module doc for the form).
    pub fn parse(kind: Kind, bytes: &[u8]) -> Result<OfflineFile, OfflineError> {
        let head_end = find_head_end(bytes)?;
        let head = std::str::from_utf8(&bytes[..head_end]).map_err(|_| {
            malformed(crate::tr!(
                "the header section is not ASCII text",
                "头部不是 ASCII 文本"
            ))
        })?;
        let mut lines = head.split('\n');
        let first = lines.next().unwrap_or_default();
        if first != kind.magic() {
            return Err(malformed(crate::tr!(
                "the first line is not `{}`",
                "第一行不是 `{}`",
                kind.magic()
            )));
        }
        let mut headers = Vec::new();
        let mut length = None;
        for line in lines {
            let (name, value) = header_line(line)?;
            if name == "content-length" && length.is_some() {
                return Err(malformed(crate::tr!(
                    "header `content-length` appears twice",
                    "头部 `content-length` 出现了两次"
                )));
            } else if name == "content-length" {
                length = Some(crate::batch::parse_decimal(value).ok_or_else(|| {
                    malformed(crate::tr!(
                        "`content-length` is not a decimal integer",
                        "`content-length` 不是十进制整数"
                    ))
                })?);
            } else if name != CERTIFICATE && headers.iter().any(|(n, _)| n == name) {
                return Err(malformed(crate::tr!(
                    "header `{name}` appears twice",
                    "头部 `{name}` 出现了两次"
                )));
            } else {
                headers.push((name.to_owned(), value.to_owned()));
            }
        }
        let body = &bytes[head_end + 2..];
        match length {
            Some(n) if n == body.len() as u64 => Ok(OfflineFile {
                kind,
                headers,
                body: body.to_vec(),
            }),
            Some(n) => Err(malformed(crate::tr!(
                "`content-length` is {n} but {} bytes follow the header section (a truncated or extended file)",
                "`content-length` 为 {n}，但头部之后有 {} 字节（文件被截断或被追加）",
                body.len()
            ))),
            None => Err(malformed(crate::tr!(
                "header `content-length` is missing",
                "缺少头部 `content-length`"
            ))),
        }
    }

    /// What [`FILE_SIGNATURE`] signs: `exchange-offline-file-signature-v1\n` followed by the
    /// file's bytes as [`Self::to_bytes`] writes them without the `exchange-file-signature`
    /// line.
    pub fn file_message(&self) -> Vec<u8> {
        let unsigned = OfflineFile {
            kind: self.kind,
            headers: self
                .headers
                .iter()
                .filter(|(n, _)| n != FILE_SIGNATURE)
                .cloned()
                .collect(),
            body: self.body.clone(),
        };
        let mut message = b"exchange-offline-file-signature-v1\n".to_vec();
        message.extend_from_slice(&unsigned.to_bytes());
        message
    }

    /// The value of header `name` (the first, for `exchange-certificate`).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The value of header `name`, or why the file is not valid without it.
    pub fn required(&self, name: &str) -> Result<&str, OfflineError> {
        self.header(name).ok_or_else(|| {
            malformed(crate::tr!(
                "header `{name}` is missing",
                "缺少头部 `{name}`"
            ))
        })
    }

    /// The signer's certificate chain (`exchange-certificate` lines), leaf first.
    pub fn certificates(&self) -> Result<Vec<CertificateDer<'static>>, OfflineError> {
        let chain: Vec<CertificateDer<'static>> = self
            .headers
            .iter()
            .filter(|(n, _)| n == CERTIFICATE)
            .map(|(_, v)| {
                base64::engine::general_purpose::STANDARD
                    .decode(v)
                    .map(CertificateDer::from)
                    .map_err(|_| {
                        malformed(crate::tr!(
                            "an `exchange-certificate` line is not base64",
                            "某行 `exchange-certificate` 不是 base64"
                        ))
                    })
            })
            .collect::<Result<_, _>>()?;
        if chain.is_empty() {
            return Err(malformed(crate::tr!(
                "no `exchange-certificate` line: the signer's certificate is required",
                "没有 `exchange-certificate` 行：必须附带签名者的证书"
            )));
        }
        Ok(chain)
    }

    /// The identity a batch or answer file names (node, resource, stream, seq).
    pub fn batch_id(&self) -> Result<BatchId, OfflineError> {
        use crate::batch::header;
        let seq = crate::batch::parse_decimal(self.required(header::SEQ)?).ok_or_else(|| {
            malformed(crate::tr!(
                "`{}` is not a decimal integer",
                "`{}` 不是十进制整数",
                header::SEQ
            ))
        })?;
        Ok(BatchId {
            node: self.required(header::NODE)?.to_owned(),
            resource: self.required(header::RESOURCE)?.to_owned(),
            stream: self.required(header::STREAM)?.to_owned(),
            seq,
        })
    }
}

/// Appends the `exchange-certificate` lines of `chain` to `headers`.
pub fn push_certificates(headers: &mut Vec<(String, String)>, chain: &[CertificateDer<'_>]) {
    for c in chain {
        headers.push((
            CERTIFICATE.to_owned(),
            base64::engine::general_purpose::STANDARD.encode(c.as_ref()),
        ));
    }
}

/// Where the header section ends (the index of its last line's `\n`, followed by the empty
/// line's `\n`).
fn find_head_end(bytes: &[u8]) -> Result<usize, OfflineError> {
    let window = &bytes[..bytes.len().min(MAX_HEAD_BYTES + 2)];
    window.windows(2).position(|w| w == b"\n\n").ok_or_else(|| {
        malformed(crate::tr!(
            "no empty line ends the header section within {} bytes",
            "头部在 {} 字节内没有以空行结束",
            MAX_HEAD_BYTES
        ))
    })
}

/// One header line checked: name and value.
fn header_line(line: &str) -> Result<(&str, &str), OfflineError> {
    let bad = || {
        malformed(crate::tr!(
            "a header line is not `name: value` with a lower-case name and printable ASCII value",
            "某个头部行不是 `名称: 值` 的形式（名称为小写，值为可打印 ASCII）"
        ))
    };
    let (name, value) = line.split_once(": ").ok_or_else(bad)?;
    let name_ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    let value_ok = !value.is_empty()
        && value.bytes().all(|b| (0x20..=0x7e).contains(&b))
        && value.trim() == value;
    if name_ok && value_ok {
        Ok((name, value))
    } else {
        Err(bad())
    }
}

/// What the hub signs on an answer: the batch answered (identity and content digest), the
/// status, and the answer body's digest.
#[derive(Debug, Clone, Copy)]
pub struct Answered<'a> {
    /// The batch answered.
    pub id: &'a BatchId,
    /// The batch's `exchange-content-sm3`.
    pub batch_sm3: &'a str,
    /// SM3 of the batch file's bytes ([`BATCH_FILE_SM3`]).
    pub file_sm3: &'a str,
    /// The HTTP status of the answer.
    pub status: u16,
    /// SM3 (hex) of the answer's body.
    pub answer_sm3: &'a str,
}

impl Answered<'_> {
    /// The signed message: the ASCII text
    /// `exchange-answer-signature-v1\n{node}\n{resource}\n{stream}\n{seq}\n{batch_sm3}\n{file_sm3}\n{status}\n{answer_sm3}\n`
    /// (digests lower-case).
    pub fn message(&self) -> Vec<u8> {
        format!(
            "exchange-answer-signature-v1\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n",
            self.id.node,
            self.id.resource,
            self.id.stream,
            self.id.seq,
            self.batch_sm3.to_ascii_lowercase(),
            self.file_sm3.to_ascii_lowercase(),
            self.status,
            self.answer_sm3.to_ascii_lowercase()
        )
        .into_bytes()
    }
}

/// The file name of an answer to the batch file whose SM3 is `file_sm3`: the batch file's
/// name with the first 16 digits of that SM3 before the extension, so an answer written again
/// to the same file replaces the earlier one and answers to different writings of a batch do
/// not.
pub fn answer_name(id: &BatchId, file_sm3: &str) -> String {
    let batch = file_name(Kind::Batch, id);
    let stem = batch.trim_end_matches(BATCH_EXTENSION);
    format!(
        "{stem}{}.{ANSWER_EXTENSION}",
        &file_sm3[..file_sm3.len().min(16)]
    )
}

/// The file name of a batch file: informative only (module doc), unique per (node, resource,
/// stream, seq), so a batch written again replaces a copy not yet carried.
pub fn file_name(kind: Kind, id: &BatchId) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    };
    let extension = match kind {
        Kind::Batch => BATCH_EXTENSION,
        Kind::Answer => ANSWER_EXTENSION,
    };
    format!(
        "{}.{}.{}.{:020}.{extension}",
        clean(&id.node),
        clean(&id.resource),
        clean(&id.stream),
        id.seq
    )
}

/// The files of `kind` in `dir` (by extension; names beginning with `.` skipped), sorted by
/// name.
pub fn list(dir: &Path, kind: Kind) -> std::io::Result<Vec<PathBuf>> {
    let extension = match kind {
        Kind::Batch => BATCH_EXTENSION,
        Kind::Answer => ANSWER_EXTENSION,
    };
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || !entry.file_type()?.is_file() {
            continue;
        }
        if Path::new(&*name)
            .extension()
            .is_some_and(|e| e == extension)
        {
            found.push(entry.path());
        }
    }
    found.sort();
    Ok(found)
}

/// Writes `bytes` to `dir/name` so that a reader sees the whole file or none (module doc).
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<PathBuf> {
    let temporary = dir.join(format!(".{name}.tmp"));
    let target = dir.join(name);
    {
        let mut f = std::fs::File::create(&temporary)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&temporary, &target)?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> OfflineFile {
        OfflineFile {
            kind: Kind::Batch,
            headers: vec![
                ("exchange-node".into(), "node-a".into()),
                ("exchange-certificate".into(), "AAEC".into()),
                ("exchange-certificate".into(), "AwQF".into()),
            ],
            body: b"\n\nbinary\0body\n\n".to_vec(),
        }
    }

    #[test]
    fn a_file_reads_back_as_written_and_refuses_any_cut_or_addition() {
        let file = sample();
        let bytes = file.to_bytes();
        assert_eq!(OfflineFile::parse(Kind::Batch, &bytes).unwrap(), file);
        assert_eq!(file.certificates().unwrap().len(), 2);
        assert!(OfflineFile::parse(Kind::Answer, &bytes).is_err());
        assert!(OfflineFile::parse(Kind::Batch, &bytes[..bytes.len() - 1]).is_err());
        let mut longer = bytes.clone();
        longer.push(b'x');
        assert!(OfflineFile::parse(Kind::Batch, &longer).is_err());
        let crlf = String::from_utf8_lossy(&bytes).replacen("node-a\n", "node-a\r\n", 1);
        assert!(OfflineFile::parse(Kind::Batch, crlf.as_bytes()).is_err());
        let twice = OfflineFile {
            headers: vec![
                ("exchange-node".into(), "a".into()),
                ("exchange-node".into(), "b".into()),
            ],
            ..sample()
        };
        assert!(OfflineFile::parse(Kind::Batch, &twice.to_bytes()).is_err());
    }

    #[test]
    fn names_are_safe_and_sort_by_seq_within_a_stream() {
        let id = |seq| BatchId {
            node: "node/../a".into(),
            resource: "户籍.R".into(),
            stream: "ab".into(),
            seq,
        };
        let a = file_name(Kind::Batch, &id(9));
        let b = file_name(Kind::Batch, &id(10));
        assert!(!a.contains('/') && a < b, "{a} {b}");
        let answer = answer_name(&id(9), &"ab".repeat(32));
        assert!(
            answer.ends_with(".abababababababab.exchange-answer"),
            "{answer}"
        );
    }
}
