//! Reading one dropped file row by row: CSV (UTF-8, or GBK/GB18030 as Chinese office software
//! writes it), JSON Lines, or the first worksheet of an XLSX workbook.
//!
//! - The header (CSV, XLSX: the first row; JSON Lines: each object's member names) names the
//!   columns; a field is matched to its column without case and surrounding spaces, and only
//!   the fields a resource names are read (default deny): other columns are never decoded.
//! - A CSV field named by a resource but missing from the header rejects the whole file before
//!   any row is read ([`FileError`]); so does a file that cannot be opened or parsed at all.
//! - A row that cannot be read (wrong field count, bytes not in the file's encoding, a line
//!   that is not a JSON object) is returned as `Err` with its reason, so it is quarantined and
//!   the rows after it still arrive; a cell that does not fit its declared type is a
//!   [`crate::ConvertError`] in the row, as for a database.
//! - Reasons name lines and columns, never a value.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use exchange_protocol::tr;

use super::convert::{Cell, convert};
use super::{FieldType, FileError, FileFormat, TextEncoding};
use crate::Row;

/// One row of a file: its line (CSV, JSON Lines) or row number (XLSX), from 1 for the header,
/// and its values in the order of the columns asked for, or why it cannot be read.
#[derive(Debug)]
pub struct FileRow {
    /// Where the row is in the file.
    pub line: u64,
    /// The row, or the reason it cannot be read.
    pub row: Result<Row, String>,
}

/// A dropped file opened for reading, its header matched to the columns asked for.
pub struct FileReader {
    columns: Vec<(String, FieldType)>,
    inner: Inner,
}

enum Inner {
    Csv {
        reader: csv::Reader<BufReader<File>>,
        encoding: TextEncoding,
        /// For each column asked for, its index in the file's header.
        at: Vec<usize>,
        width: usize,
        record: csv::ByteRecord,
    },
    Lines {
        lines: std::io::Split<BufReader<File>>,
        line: u64,
        encoding: TextEncoding,
    },
    Xlsx {
        range: calamine::Range<calamine::Data>,
        /// Next row index in `range` (0 is the header).
        next: usize,
        at: Vec<usize>,
    },
}

impl FileReader {
    /// Opens `path` as `format`, decoding text as `encoding` (`Auto`: a UTF-8 byte-order mark
    /// or all of the file being valid UTF-8 means UTF-8, anything else GB18030), and matches the
    /// header against `columns` (name and declared type, in the order rows give them).
    pub fn open(
        path: &Path,
        format: FileFormat,
        encoding: TextEncoding,
        columns: &[(String, FieldType)],
    ) -> Result<FileReader, FileError> {
        let columns = columns.to_vec();
        let inner = match format {
            FileFormat::Csv => open_csv(path, encoding, &columns)?,
            FileFormat::JsonLines => Inner::Lines {
                // Fields are evaluated in order: the file is checked before it is opened.
                encoding: {
                    check_text(path, false)?;
                    detect(path, encoding)?
                },
                lines: BufReader::new(open_regular(path).map_err(FileError::io)?).split(b'\n'),
                line: 0,
            },
            FileFormat::Xlsx => open_xlsx(path, &columns)?,
        };
        Ok(FileReader { columns, inner })
    }

    /// The next row, `None` at the end of the file; `Err` when the file cannot be read any
    /// further (an I/O error: the pull stops and the file is read again later, from its last
    /// committed row).
    pub fn next_row(&mut self) -> Option<Result<FileRow, FileError>> {
        let columns = &self.columns;
        match &mut self.inner {
            Inner::Csv {
                reader,
                encoding,
                at,
                width,
                record,
            } => {
                let line = reader.position().line();
                match reader.read_byte_record(record) {
                    Ok(false) => None,
                    Ok(true) => {
                        let start = record.position().map_or(line, |p| p.line());
                        let end = reader.position().line().saturating_sub(1).max(start);
                        Some(Ok(FileRow {
                            line: start,
                            row: csv_row(record, *encoding, at, *width, columns, (start, end)),
                        }))
                    }
                    Err(e) => match e.kind() {
                        csv::ErrorKind::Io(io) => Some(Err(FileError::Io {
                            reason: exchange_protocol::translate::io(io),
                        })),
                        _ => Some(Ok(FileRow {
                            line,
                            row: Err(csv_error(&e)),
                        })),
                    },
                }
            }
            Inner::Lines {
                lines,
                line,
                encoding,
            } => loop {
                *line += 1;
                let bytes = match lines.next()? {
                    Ok(b) => b,
                    Err(e) => return Some(Err(FileError::io(e))),
                };
                let text = trim_line(&bytes);
                if text.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return Some(Ok(FileRow {
                    line: *line,
                    row: json_row(text, *encoding, columns),
                }));
            },
            Inner::Xlsx { range, next, at } => {
                // Rows by index: the sheet is read once, not from its top for every row.
                if *next >= range.height() {
                    return None;
                }
                let r = *next;
                *next += 1;
                let first = range.start().map_or(0, |(row, _)| row as u64);
                Some(Ok(FileRow {
                    line: first + r as u64 + 1,
                    row: Ok(xlsx_row(range, r, at, columns)),
                }))
            }
        }
    }

    /// Skips `n` rows (those a crash left committed): they are read, not returned.
    pub fn skip(&mut self, n: u64) -> Result<(), FileError> {
        for _ in 0..n {
            match self.next_row() {
                None => return Ok(()),
                Some(Err(e)) => return Err(e),
                Some(Ok(_)) => {}
            }
        }
        Ok(())
    }
}

/// Opens a dropped file for reading, refusing a symbolic link (a sender could point one at a
/// file only the agent may read) and anything but a regular file.
pub fn open_regular(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            tr!("not a regular file", "不是普通文件"),
        ));
    }
    Ok(file)
}

/// The longest line a CSV or JSON Lines file may hold: a file without line breaks would
/// otherwise be read into memory whole as one row.
pub const MAX_LINE_BYTES: u64 = 16 << 20;

/// What a text file's bytes say of its structure before it is parsed.
struct TextShape {
    /// `"` characters. RFC 4180 quoting always gives an even count (each quoted field opens
    /// and closes, a quote inside is doubled); an odd one is a quote left open, which a CSV
    /// reader takes to the end of the file, silently joining every line after it into one
    /// field. (`"` is never a byte inside a UTF-8 or GB18030 character.)
    quotes: u64,
    /// The longest line, in bytes.
    longest_line: u64,
}

fn text_shape(path: &Path) -> std::io::Result<TextShape> {
    let mut file = open_regular(path)?;
    let mut buf = vec![0u8; 256 * 1024];
    let (mut quotes, mut line, mut longest_line) = (0u64, 0u64, 0u64);
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(TextShape {
                quotes,
                longest_line: longest_line.max(line),
            });
        }
        for &b in &buf[..n] {
            match b {
                b'"' => quotes += 1,
                b'\n' => {
                    longest_line = longest_line.max(line);
                    line = 0;
                    continue;
                }
                _ => {}
            }
            line += 1;
        }
    }
}

/// Refuses a text file with a line over [`MAX_LINE_BYTES`] or (`csv`) an open quote.
fn check_text(path: &Path, csv: bool) -> Result<(), FileError> {
    let shape = text_shape(path).map_err(FileError::io)?;
    if shape.longest_line > MAX_LINE_BYTES {
        let mib = MAX_LINE_BYTES >> 20;
        return Err(FileError::Malformed(tr!(
            "the file has a line longer than {mib} MiB: not a row of a table",
            "文件中有超过 {mib} MiB 的行：不是表格的一行"
        )));
    }
    if csv && !shape.quotes.is_multiple_of(2) {
        return Err(FileError::Malformed(tr!(
            "the file has an odd number of `\"` characters: a quoted field is not closed, which would join the lines after it into one field; fix the quoting",
            "文件中 `\"` 的个数为奇数：有引号括起的字段没有闭合，会把其后各行并入一个字段；请修正引号"
        )));
    }
    Ok(())
}

/// The encoding of a text file: as configured, or guessed from the whole file: UTF-8 when it
/// starts with a byte-order mark or every byte sequence in it is UTF-8, GB18030 otherwise. (A
/// GBK file whose first rows are ASCII is still GBK; a head alone cannot tell.) A file that is
/// UTF-8 but for a few damaged bytes ([`Utf8Tally::damaged`]) is refused: read as GB18030, its
/// every Chinese character would turn into others without an error.
fn detect(path: &Path, encoding: TextEncoding) -> Result<TextEncoding, FileError> {
    if encoding != TextEncoding::Auto {
        return Ok(encoding);
    }
    let mut file = open_regular(path).map_err(FileError::io)?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut tally = Utf8Tally::default();
    let mut first = true;
    loop {
        let n = file.read(&mut buf).map_err(FileError::io)?;
        if n == 0 {
            tally.finish();
            break;
        }
        if std::mem::take(&mut first) && buf[..n].starts_with(b"\xEF\xBB\xBF") {
            return Ok(TextEncoding::Utf8);
        }
        tally.feed(&buf[..n]);
    }
    match tally.invalid {
        0 => Ok(TextEncoding::Utf8),
        _ if tally.damaged() => Err(FileError::Malformed(tr!(
            "the file is UTF-8 but for {} damaged byte sequence(s), the first at byte {}: fix or re-export it (read as GB18030 its Chinese text would be garbled), or set the source's `encoding`",
            "该文件是 UTF-8 编码，但有 {} 处字节损坏，第一处在第 {} 字节：请修正或重新导出（若按 GB18030 读取，其中的中文会变成乱码），或设置数据源的 `encoding`",
            tally.invalid,
            tally.first_invalid.unwrap_or_default()
        ))),
        _ => Ok(TextEncoding::Gb18030),
    }
}

/// The characters of more than one byte in `text`.
fn multibyte(text: &str) -> u64 {
    text.chars().filter(|c| c.len_utf8() > 1).count() as u64
}

/// What a whole file's bytes say of UTF-8: characters of more than one byte that are valid,
/// and byte sequences that are not.
#[derive(Debug, Default)]
struct Utf8Tally {
    /// Bytes of a character cut by the end of the previous read.
    carry: Vec<u8>,
    /// Bytes read before `carry`.
    offset: u64,
    /// Valid characters of 2 to 4 bytes.
    multibyte: u64,
    /// Invalid byte sequences.
    invalid: u64,
    /// Where the first one starts.
    first_invalid: Option<u64>,
}

impl Utf8Tally {
    fn feed(&mut self, bytes: &[u8]) {
        self.carry.extend_from_slice(bytes);
        let mut at = 0;
        loop {
            match std::str::from_utf8(&self.carry[at..]) {
                Ok(text) => {
                    self.multibyte += multibyte(text);
                    at = self.carry.len();
                    break;
                }
                Err(e) => {
                    let valid = &self.carry[at..at + e.valid_up_to()];
                    self.multibyte += multibyte(std::str::from_utf8(valid).expect("checked valid"));
                    at += e.valid_up_to();
                    let Some(len) = e.error_len() else {
                        break; // a character cut by the read: completed by the next one
                    };
                    self.invalid += 1;
                    self.first_invalid.get_or_insert(self.offset + at as u64);
                    at += len;
                }
            }
        }
        self.offset += at as u64;
        self.carry.drain(..at);
    }

    /// The end of the file: a character still cut is invalid.
    fn finish(&mut self) {
        if !self.carry.is_empty() {
            self.invalid += 1;
            self.first_invalid.get_or_insert(self.offset);
        }
    }

    /// UTF-8 with damage rather than another encoding: at least 16 valid characters of more
    /// than one byte for each invalid sequence. (GBK text has almost no valid UTF-8
    /// multi-byte characters: its byte pairs rarely form one.)
    fn damaged(&self) -> bool {
        self.invalid > 0 && self.multibyte >= 16 * self.invalid
    }
}

/// Bytes as text in `encoding` (never `Auto` here), `None` when they are not.
fn decode(bytes: &[u8], encoding: TextEncoding) -> Option<String> {
    match encoding {
        TextEncoding::Gb18030 => encoding_rs::GB18030
            .decode_without_bom_handling_and_without_replacement(bytes)
            .map(|c| c.into_owned()),
        _ => std::str::from_utf8(bytes).ok().map(str::to_owned),
    }
}

fn not_encoded(encoding: TextEncoding) -> String {
    tr!(
        "the row is not valid {} text",
        "该行不是有效的 {} 文本",
        encoding.name()
    )
}

fn open_csv(
    path: &Path,
    encoding: TextEncoding,
    columns: &[(String, FieldType)],
) -> Result<Inner, FileError> {
    let encoding = detect(path, encoding)?;
    check_text(path, true)?;
    let file = open_regular(path).map_err(FileError::io)?;
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(BufReader::new(file));
    let mut header = csv::ByteRecord::new();
    if !reader
        .read_byte_record(&mut header)
        .map_err(|e| FileError::Malformed(csv_error(&e)))?
    {
        return Err(FileError::Malformed(tr!(
            "the file is empty: a CSV file starts with a header row",
            "文件为空：CSV 文件的第一行应为表头"
        )));
    }
    let names = header
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let f = if i == 0 {
                f.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(f)
            } else {
                f
            };
            decode(f, encoding).ok_or_else(|| {
                FileError::Malformed(tr!(
                    "the header row is not valid {} text; set the source's `encoding`",
                    "表头不是有效的 {} 文本；请设置数据源的 `encoding`",
                    encoding.name()
                ))
            })
        })
        .collect::<Result<Vec<String>, FileError>>()?;
    let at = match_header(&names, columns)?;
    Ok(Inner::Csv {
        reader,
        encoding,
        at,
        width: names.len(),
        record: csv::ByteRecord::new(),
    })
}

/// For each column asked for, its index among `names` (without case and surrounding spaces).
fn match_header(
    names: &[String],
    columns: &[(String, FieldType)],
) -> Result<Vec<usize>, FileError> {
    columns
        .iter()
        .map(|(c, _)| {
            names
                .iter()
                .position(|n| n.trim().eq_ignore_ascii_case(c.trim()))
                .ok_or_else(|| {
                    // Not the header's cells: in a file exported without a header row they
                    // are the first row's values.
                    let n = names.len();
                    FileError::Malformed(tr!(
                        "the header (first row, {n} columns) has no column `{c}`; the first row must name the columns, as [resources.fields] does",
                        "表头（第一行，共 {n} 列）中没有列 `{c}`；第一行应为列名，与 [resources.fields] 中的名称一致"
                    ))
                })
        })
        .collect()
}

fn csv_error(e: &csv::Error) -> String {
    tr!(
        "the file cannot be read as CSV: {}",
        "无法按 CSV 读取该文件：{}",
        match e.kind() {
            csv::ErrorKind::Io(io) => exchange_protocol::translate::io(io),
            _ => tr!("a quoted field is not closed", "有引号括起的字段没有闭合"),
        }
    )
}

fn csv_row(
    record: &csv::ByteRecord,
    encoding: TextEncoding,
    at: &[usize],
    width: usize,
    columns: &[(String, FieldType)],
    (start, end): (u64, u64),
) -> Result<Row, String> {
    if record.len() != width {
        let n = record.len();
        return Err(if end > start {
            tr!(
                "the row, lines {start} to {end} (a quoted field spans lines), has {n} fields, the header {width}",
                "该行（第 {start} 至 {end} 行，有引号括起的字段跨行）有 {n} 个字段，表头有 {width} 个"
            )
        } else {
            tr!(
                "the row has {n} fields, the header {width}",
                "该行有 {n} 个字段，表头有 {width} 个"
            )
        });
    }
    let mut values = Vec::with_capacity(at.len());
    for (&i, (name, ty)) in at.iter().zip(columns) {
        let text = decode(&record[i], encoding).ok_or_else(|| not_encoded(encoding))?;
        let cell = if text.is_empty() {
            Cell::Empty
        } else {
            Cell::Text(text)
        };
        values.push(convert(cell, *ty, name));
    }
    Ok(Row { values })
}

/// A line without its `\r` (CRLF files) and a UTF-8 byte-order mark.
fn trim_line(bytes: &[u8]) -> &[u8] {
    let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
    bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes)
}

fn json_row(
    bytes: &[u8],
    encoding: TextEncoding,
    columns: &[(String, FieldType)],
) -> Result<Row, String> {
    let text = decode(bytes, encoding).ok_or_else(|| not_encoded(encoding))?;
    let not_object = || tr!("the line is not a JSON object", "该行不是 JSON 对象");
    let serde_json::Value::Object(mut object) =
        serde_json::from_str::<serde_json::Value>(&text).map_err(|_| not_object())?
    else {
        return Err(not_object());
    };
    let values = columns
        .iter()
        .map(|(name, ty)| {
            let member = object
                .keys()
                .find(|k| k.trim().eq_ignore_ascii_case(name.trim()))
                .cloned();
            let cell = match member.and_then(|m| object.remove(&m)) {
                None | Some(serde_json::Value::Null) => Cell::Empty,
                Some(serde_json::Value::String(s)) => Cell::Text(s),
                Some(serde_json::Value::Bool(b)) => Cell::Bool(b),
                Some(serde_json::Value::Number(n)) => match (n.as_i64(), *ty) {
                    (Some(i), _) => Cell::Int(i),
                    (None, FieldType::Decimal | FieldType::Text) => Cell::Text(n.to_string()),
                    (None, _) => n.as_f64().map_or(Cell::Text(n.to_string()), Cell::Number),
                },
                Some(other) => Cell::Json(other),
            };
            convert(cell, *ty, name)
        })
        .collect();
    Ok(Row { values })
}

fn open_xlsx(path: &Path, columns: &[(String, FieldType)]) -> Result<Inner, FileError> {
    use calamine::Reader;
    let unreadable = |e: String| {
        FileError::Malformed(tr!(
            "the file cannot be read as an XLSX workbook: {e}",
            "无法按 XLSX 工作簿读取该文件：{e}"
        ))
    };
    let mut book: calamine::Xlsx<_> = calamine::open_workbook(path)
        .map_err(|e: calamine::XlsxError| unreadable(e.to_string()))?;
    let range = book
        .worksheet_range_at(0)
        .ok_or_else(|| unreadable(tr!("it has no worksheet", "其中没有工作表")))?
        .map_err(|e| unreadable(e.to_string()))?;
    let names: Vec<String> = match range.rows().next() {
        Some(header) => header.iter().map(|c| c.to_string()).collect(),
        None => {
            return Err(FileError::Malformed(tr!(
                "the first worksheet is empty: its first row is the header",
                "第一个工作表为空：其第一行应为表头"
            )));
        }
    };
    let at = match_header(&names, columns)?;
    Ok(Inner::Xlsx { range, next: 1, at })
}

fn xlsx_row(
    range: &calamine::Range<calamine::Data>,
    r: usize,
    at: &[usize],
    columns: &[(String, FieldType)],
) -> Row {
    use calamine::Data;
    let values = at
        .iter()
        .zip(columns)
        .map(|(&i, (name, ty))| {
            let cell = match range.get((r, i)) {
                None | Some(Data::Empty) => Cell::Empty,
                Some(Data::String(s)) => Cell::Text(s.clone()),
                Some(Data::Int(n)) => Cell::Int(*n),
                Some(Data::Float(f)) => Cell::Number(*f),
                Some(Data::Bool(b)) => Cell::Bool(*b),
                Some(Data::DateTime(d)) => match d.as_datetime() {
                    Some(t) => Cell::DateTime(t),
                    None => Cell::Number(d.as_f64()),
                },
                Some(Data::DateTimeIso(s)) | Some(Data::DurationIso(s)) => Cell::Text(s.clone()),
                Some(Data::Error(_)) => {
                    return Err(crate::ConvertError {
                        column: name.clone(),
                        source_type: ty.name().to_owned(),
                        reason: tr!(
                            "the cell holds a spreadsheet error (#N/A, #VALUE!, …)",
                            "该单元格是表格错误值（#N/A、#VALUE! 等）"
                        ),
                    });
                }
            };
            convert(cell, *ty, name)
        })
        .collect();
    Row { values }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn columns() -> Vec<(String, FieldType)> {
        vec![
            ("编号".into(), FieldType::Text),
            ("姓名".into(), FieldType::Text),
        ]
    }

    fn rows(path: &Path) -> Result<Vec<FileRow>, FileError> {
        let mut r = FileReader::open(path, FileFormat::Csv, TextEncoding::Auto, &columns())?;
        let mut out = Vec::new();
        while let Some(row) = r.next_row() {
            out.push(row?);
        }
        Ok(out)
    }

    #[test]
    fn a_gbk_file_whose_first_rows_are_ascii_is_read_as_gbk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.csv");
        let mut text = String::from("编号,姓名\n");
        for i in 0..20_000 {
            text.push_str(&format!("A{i:05},zhang san\n"));
        }
        text.push_str("B1,张三\n");
        let (gbk, _, _) = encoding_rs::GBK.encode(&text);
        assert!(gbk.len() > 300 * 1024, "past the first reads");
        std::fs::write(&path, &gbk).unwrap();
        let rows = rows(&path).unwrap();
        let last = rows.last().unwrap().row.as_ref().unwrap();
        assert_eq!(
            last.values[1].as_ref().unwrap(),
            &crate::Value::Text("张三".into())
        );
    }

    #[test]
    fn a_utf8_file_with_one_damaged_byte_is_rejected_not_read_as_gb18030() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("u.csv");
        let mut text = String::from("编号,姓名\n");
        for i in 0..300 {
            text.push_str(&format!("{i},张三丰\n"));
        }
        let mut bytes = text.into_bytes();
        // One byte of one character lost (a bad copy), past the first read.
        let at = bytes.len() - 5;
        bytes.remove(at);
        std::fs::write(&path, &bytes).unwrap();
        let Err(FileError::Malformed(reason)) = rows(&path) else {
            panic!("a damaged UTF-8 file is not read as GB18030");
        };
        assert!(
            reason.contains("UTF-8") && reason.contains("1 damaged"),
            "{reason}"
        );
        // A GBK file of the same rows is still GBK.
        let mut plain = String::from("编号,姓名\n");
        for i in 0..300 {
            plain.push_str(&format!("{i},张三丰\n"));
        }
        let (gbk, _, _) = encoding_rs::GBK.encode(&plain);
        std::fs::write(&path, &gbk).unwrap();
        assert_eq!(rows(&path).unwrap().len(), 300);
    }

    #[test]
    fn an_open_quote_rejects_the_file_and_a_missing_column_names_no_cell() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.csv");
        std::fs::write(&path, "编号,姓名\n1,\"abc\n2,def\n3,ghi\n").unwrap();
        assert!(matches!(rows(&path), Err(FileError::Malformed(_))));
        // No header row: the first row is data, and is not repeated in the reason.
        std::fs::write(&path, "440524188001010014,李四\n").unwrap();
        let Err(FileError::Malformed(reason)) = rows(&path) else {
            panic!("a missing column rejects the file");
        };
        assert!(
            !reason.contains("440524188001010014") && !reason.contains("李四"),
            "{reason}"
        );
    }

    #[test]
    fn a_line_over_the_limit_rejects_the_file_before_it_is_read_into_memory() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.jsonl");
        let mut text = vec![b'x'; (MAX_LINE_BYTES + 1) as usize];
        text.push(b'\n');
        std::fs::write(&path, &text).unwrap();
        let opened = FileReader::open(&path, FileFormat::JsonLines, TextEncoding::Auto, &columns());
        assert!(matches!(opened, Err(FileError::Malformed(r)) if r.contains("MiB")));
    }
}
