//! The CSV reader: decodes the file (a BOM, `--encoding`, else UTF-8), picks the delimiter
//! (`--delimiter`, else sniffed among `,` `;` tab `|`), splits records with `csv_core`, and
//! hands each record to the shared `RowAssembler` as one row of text cells.
//!
//! Why not the `csv` crate's reader: it reports a record that follows blank lines at the
//! line where the blank run began, and grows a record without bound on an unclosed quote.
//! Our own loop over `csv_core` counts every line terminator it passes (so a row number is
//! the line the record starts on, multi-line quoted fields included) and refuses a record
//! larger than [`MAX_RECORD_BYTES`] with its line.
//!
//! A record that is not valid UTF-8 (after decoding) is not fatal: it travels to the
//! pipeline as a [`SheetRow`] carrying its rejection, with its bytes shown lossily, so the
//! rows around it still load. The header line has no such escape: it must name the columns.
//! Cells are strings; typing is `convert`'s business.

use std::fs::File;
use std::io::{BufRead, BufReader, Cursor, Read};

use anyhow::{Context, bail};
use calamine::Data;
use csv_core::ReadRecordResult;
use encoding_rs::Encoding;
use encoding_rs_io::DecodeReaderBytesBuilder;

use super::{MAX_COLUMNS, RowAssembler, SheetRow, SourceSpec};
use crate::convert::Rejection;

/// Largest record read (its fields' bytes together): past it the file is refused, naming
/// the line, instead of filling memory (an unclosed quote swallows the rest of the file).
pub const MAX_RECORD_BYTES: usize = 64 << 20;

/// Most fields a record may have (each costs a `usize` of bookkeeping, even past the
/// widest sheet a row is assembled for).
const MAX_FIELDS: usize = 1 << 20;

/// Delimiters tried when `--delimiter` is not given, in order of preference.
const SNIFFED_DELIMITERS: [u8; 4] = [b',', b';', b'\t', b'|'];

/// Bytes of decoded text looked at to pick the delimiter.
const SNIFF_BYTES: u64 = 64 << 10;

/// Records (the header and the lines after it) looked at to pick the delimiter.
const SNIFF_RECORDS: usize = 10;

/// Rejection reason of a record that is not valid UTF-8.
pub const INVALID_UTF8: &str = "invalid UTF-8";

/// How a CSV file is read. The default reads a UTF-8 `.csv` file, sniffing its delimiter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsvOptions {
    /// Read the file as CSV whatever its name (`--input-format csv`, standard input).
    pub forced: bool,
    /// Field delimiter; `None` sniffs it among `,` `;` tab `|`.
    pub delimiter: Option<u8>,
    /// Quote character.
    pub quote: u8,
    /// Encoding of the file; `None` is UTF-8. A BOM overrides it.
    pub encoding: Option<&'static Encoding>,
    /// A field equal to this text is NULL (psql's `\copy ... NULL`).
    pub null_string: Option<String>,
    /// What messages call the input instead of its path (`stdin`, a service's upload by the
    /// client's file name), also for workbooks; for CSV also the sheet name.
    pub label: Option<String>,
}

impl Default for CsvOptions {
    fn default() -> Self {
        CsvOptions {
            forced: false,
            delimiter: None,
            quote: b'"',
            encoding: None,
            null_string: None,
            label: None,
        }
    }
}

/// Whether `spec` is read as CSV: a `.csv` name, or CSV forced.
pub fn is_csv(spec: &SourceSpec) -> bool {
    spec.csv.forced
        || spec
            .path
            .extension()
            .is_some_and(|extension| extension.eq_ignore_ascii_case("csv"))
}

/// The input as messages name it.
fn label(spec: &SourceSpec) -> String {
    spec.csv
        .label
        .clone()
        .unwrap_or_else(|| spec.path.display().to_string())
}

/// The sheet name of a CSV source: its label, else the file's name.
fn sheet_name(spec: &SourceSpec) -> String {
    spec.csv.label.clone().unwrap_or_else(|| {
        spec.path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned()
    })
}

/// Reads every record of the CSV file into `rows`; returns the sheet name.
pub(super) fn read_csv(spec: &SourceSpec, rows: &mut RowAssembler<'_>) -> anyhow::Result<String> {
    let label = label(spec);
    let mut input = open_decoded(spec)?;
    let mut sample = Vec::new();
    (&mut input)
        .take(SNIFF_BYTES)
        .read_to_end(&mut sample)
        .with_context(|| format!("cannot read {label}"))?;
    let complete = (sample.len() as u64) < SNIFF_BYTES;
    let delimiter = spec
        .csv
        .delimiter
        .unwrap_or_else(|| sniff_delimiter(&sample, complete, spec.csv.quote, spec.header_row));
    let input = BufReader::with_capacity(64 << 10, Cursor::new(sample).chain(input));
    let mut records = RecordReader::new(input, delimiter, spec.csv.quote);
    let null_string = spec.csv.null_string.as_deref();
    while !rows.stopped {
        let Some(line) = records
            .next_record()
            .with_context(|| format!("cannot read {label}"))?
        else {
            break;
        };
        let row_index = u32::try_from(line - 1).unwrap_or(u32::MAX);
        // each field on its own: two fields can split one character between them
        let valid = records
            .fields()
            .take(MAX_COLUMNS as usize)
            .map(std::str::from_utf8)
            .collect::<Result<Vec<&str>, _>>();
        match valid {
            Ok(fields) => {
                for (column, field) in fields.into_iter().enumerate() {
                    if field.is_empty() || null_string == Some(field) {
                        continue;
                    }
                    rows.push_owned((row_index, column as u32), Data::String(field.to_owned()));
                }
                // a record whose fields are all empty is a blank row and is skipped by flush
                rows.flush();
            }
            Err(_) => {
                let cells = records
                    .fields()
                    .take(MAX_COLUMNS as usize)
                    .map(|field| match field.is_empty() {
                        true => Data::Empty,
                        false => Data::String(String::from_utf8_lossy(field).into_owned()),
                    })
                    .collect();
                let rejection = Rejection {
                    column: String::new(),
                    reason: INVALID_UTF8.to_string(),
                };
                rows.push_rejected(row_index, cells, rejection);
            }
        }
    }
    Ok(sheet_name(spec))
}

/// Checks the header of a CSV file: it must name the columns, so a first line whose every
/// cell looks like a value (a number, a date) is refused.
pub(super) fn check_header(spec: &SourceSpec, cells: &[String]) -> anyhow::Result<()> {
    let values = cells.iter().filter(|cell| !cell.trim().is_empty());
    let mut values = values.peekable();
    if values.peek().is_some() && values.all(|cell| looks_like_value(cell)) {
        return Err(no_header_line(spec));
    }
    Ok(())
}

/// The error of a CSV file without a header line.
pub(super) fn no_header_line(spec: &SourceSpec) -> anyhow::Error {
    anyhow::anyhow!(
        "{} has no header line: the first line of a CSV file must name the columns",
        label(spec)
    )
}

/// The error of a header line that the reader could not read (not valid UTF-8).
pub(super) fn unreadable_header(spec: &SourceSpec, row: &SheetRow) -> anyhow::Error {
    anyhow::anyhow!(
        "the header (line {}) of {} is not valid UTF-8; pass --encoding with the file's encoding (windows-1252, latin1, utf-16, ...)",
        row.row_number,
        label(spec)
    )
}

/// Whether a header cell is a value rather than a name: a number, or a date or time.
fn looks_like_value(cell: &str) -> bool {
    let cell = cell.trim();
    if !cell.bytes().any(|byte| byte.is_ascii_digit()) {
        return false;
    }
    let numeric = cell.parse::<f64>().is_ok();
    let date_like = cell
        .bytes()
        .all(|byte| byte.is_ascii_digit() || b"-/.: T+Z".contains(&byte));
    numeric || date_like
}

/// Opens the file as a stream of UTF-8 bytes: a BOM (UTF-8, UTF-16LE/BE) picks the encoding
/// and is stripped; else `--encoding` decodes; else the bytes pass through unchanged, so that
/// invalid UTF-8 reaches the per-record check instead of turning into U+FFFD.
fn open_decoded(spec: &SourceSpec) -> anyhow::Result<impl Read> {
    let file = File::open(&spec.path).with_context(|| format!("cannot open {}", label(spec)))?;
    // an explicit UTF-8 would be transcoded (invalid bytes replaced): pass it through instead
    let encoding = spec
        .csv
        .encoding
        .filter(|encoding| *encoding != encoding_rs::UTF_8);
    Ok(DecodeReaderBytesBuilder::new()
        .encoding(encoding)
        .bom_override(true)
        .utf8_passthru(true)
        .strip_bom(true)
        .build(file))
}

/// Picks the delimiter that splits the header record and the few after it into the same
/// number (more than one) of fields, trying `,` `;` tab `|` in that order; `,` when none
/// does. Records above `header_row` are not looked at; with an incomplete `sample`, its
/// last (possibly cut) record is not either.
fn sniff_delimiter(sample: &[u8], complete: bool, quote: u8, header_row: u32) -> u8 {
    SNIFFED_DELIMITERS
        .into_iter()
        .find(|&delimiter| {
            let mut records = RecordReader::new(sample, delimiter, quote);
            let mut field_counts = Vec::new();
            // sniffing stops at a record too large for the sample: what was seen decides
            while let Ok(Some(line)) = records.next_record() {
                if line < u64::from(header_row) || records.fields().all(<[u8]>::is_empty) {
                    continue;
                }
                field_counts.push(records.fields().count());
                if field_counts.len() > SNIFF_RECORDS {
                    break;
                }
            }
            if !complete && field_counts.len() > 1 {
                field_counts.pop();
            }
            field_counts
                .first()
                .is_some_and(|&first| first > 1 && field_counts.iter().all(|&count| count == first))
        })
        .unwrap_or(b',')
}

/// Splits a byte stream into CSV records, knowing the line each one starts on.
struct RecordReader<R> {
    input: R,
    parser: csv_core::Reader,
    /// The current record's field bytes, back to back; `fields_len` of them are used.
    field_bytes: Vec<u8>,
    fields_len: usize,
    /// End offset (in `field_bytes`) of each field; `ends_len` of them are used.
    ends: Vec<usize>,
    ends_len: usize,
    /// 1-based line of the next byte to be parsed.
    line: u64,
    /// The last byte passed was `\r`: a `\n` right after it ends no further line.
    after_cr: bool,
    /// 1-based line of the current record's first byte, once it is seen.
    record_line: Option<u64>,
}

impl<R: BufRead> RecordReader<R> {
    fn new(input: R, delimiter: u8, quote: u8) -> Self {
        RecordReader {
            input,
            parser: csv_core::ReaderBuilder::new()
                .delimiter(delimiter)
                .quote(quote)
                .build(),
            field_bytes: vec![0; 4 << 10],
            fields_len: 0,
            ends: vec![0; 64],
            ends_len: 0,
            line: 1,
            after_cr: false,
            record_line: None,
        }
    }

    /// Reads the next record; returns the 1-based line it starts on, or `None` at the end.
    /// Blank lines are skipped (by `csv_core`), and counted.
    fn next_record(&mut self) -> anyhow::Result<Option<u64>> {
        self.fields_len = 0;
        self.ends_len = 0;
        self.record_line = None;
        loop {
            let input = self.input.fill_buf()?;
            let (result, consumed, written, ended) = self.parser.read_record(
                input,
                &mut self.field_bytes[self.fields_len..],
                &mut self.ends[self.ends_len..],
            );
            let consumed_bytes = &input[..consumed];
            count_lines(
                consumed_bytes,
                &mut self.line,
                &mut self.after_cr,
                &mut self.record_line,
            );
            self.input.consume(consumed);
            self.fields_len += written;
            self.ends_len += ended;
            match result {
                ReadRecordResult::InputEmpty => {}
                ReadRecordResult::OutputFull => {
                    if self.field_bytes.len() >= MAX_RECORD_BYTES {
                        bail!(
                            "the record on line {} is larger than {} MiB (an unclosed quote?)",
                            self.record_line.unwrap_or(self.line),
                            MAX_RECORD_BYTES >> 20
                        );
                    }
                    let grown = (self.field_bytes.len() * 2).min(MAX_RECORD_BYTES);
                    self.field_bytes.resize(grown, 0);
                }
                ReadRecordResult::OutputEndsFull => {
                    if self.ends.len() >= MAX_FIELDS {
                        bail!(
                            "the record on line {} has more than {MAX_FIELDS} fields",
                            self.record_line.unwrap_or(self.line)
                        );
                    }
                    let grown = (self.ends.len() * 2).min(MAX_FIELDS);
                    self.ends.resize(grown, 0);
                }
                ReadRecordResult::Record => {
                    return Ok(Some(self.record_line.unwrap_or(self.line)));
                }
                ReadRecordResult::End => return Ok(None),
            }
        }
    }

    /// The current record's fields.
    fn fields(&self) -> impl Iterator<Item = &[u8]> {
        let ends = &self.ends[..self.ends_len];
        ends.iter().enumerate().map(move |(position, &end)| {
            let start = position.checked_sub(1).map_or(0, |previous| ends[previous]);
            &self.field_bytes[start..end]
        })
    }
}

/// Advances `line` past the line terminators in `bytes` (`\n`, `\r\n` and a lone `\r`,
/// as `csv_core` takes them), and notes in `record_line` the line of the first other byte.
fn count_lines(bytes: &[u8], line: &mut u64, after_cr: &mut bool, record_line: &mut Option<u64>) {
    let is_terminator = |byte: &u8| matches!(byte, b'\n' | b'\r');
    let mut rest = bytes;
    if record_line.is_none() {
        let leading = rest.iter().take_while(|byte| is_terminator(byte)).count();
        advance(&rest[..leading], line, after_cr);
        rest = &rest[leading..];
        if !rest.is_empty() {
            *record_line = Some(*line);
        }
    }
    advance(rest, line, after_cr);
}

fn advance(bytes: &[u8], line: &mut u64, after_cr: &mut bool) {
    if bytes.is_empty() {
        return;
    }
    for position in memchr::memchr2_iter(b'\n', b'\r', bytes) {
        let follows_cr = match position {
            0 => *after_cr,
            _ => bytes[position - 1] == b'\r',
        };
        if bytes[position] == b'\r' || !follows_cr {
            *line += 1;
        }
    }
    *after_cr = bytes.last() == Some(&b'\r');
}

impl RowAssembler<'_> {
    /// Hands on a row the reader could not read as it is (flushing the row gathered so far):
    /// `cells` show it as well as they can, and the pipeline rejects it for `rejection`.
    fn push_rejected(&mut self, row_index: u32, cells: Vec<Data>, rejection: Rejection) {
        self.flush();
        if row_index < self.first_row_index || self.stopped {
            return;
        }
        let row = SheetRow {
            row_number: row_index + 1,
            cells,
            rejection: Some(rejection),
        };
        if (self.visit)(row).is_break() {
            self.stopped = true;
        }
    }
}

/// Reads `text` with `options` into rows, the header first (for unit tests).
#[cfg(test)]
fn read_text(bytes: &[u8], options: CsvOptions, header_row: u32) -> anyhow::Result<Vec<SheetRow>> {
    let path = std::env::temp_dir().join(format!(
        "importer-csv-{}-{}.csv",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::write(&path, bytes).expect("temp file is writable");
    let spec = SourceSpec {
        xlsx_reader: crate::source::XlsxReader::Fast,
        xls_reader: crate::source::XlsReader::Fast,
        path: path.clone(),
        sheet: None,
        header_row,
        csv: options,
    };
    let mut seen = Vec::new();
    let result = super::read_rows(&spec, &mut |row| {
        seen.push(row);
        std::ops::ControlFlow::Continue(())
    });
    std::fs::remove_file(&path).ok();
    result.map(|_| seen)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(row: &SheetRow) -> Vec<String> {
        row.cells.iter().map(crate::convert::cell_text).collect()
    }

    fn numbers_and_texts(rows: &[SheetRow]) -> Vec<(u32, Vec<String>)> {
        rows.iter()
            .map(|row| (row.row_number, texts(row)))
            .collect()
    }

    #[test]
    fn row_numbers_are_the_line_a_record_starts_on() {
        let cases: [(&[u8], Vec<u32>); 6] = [
            (b"a,b\n1,2\n\n\n3,4\n", vec![1, 2, 5]),
            (b"a,b\r\n1,2\r\n\r\n\r\n3,4\r\n", vec![1, 2, 5]),
            (b"a,b\r1,2\r\r3,4", vec![1, 2, 4]),
            (b"\n\na,b\n1,2\n", vec![3, 4]),
            (b"a,b\n\"x\ny\nz\",2\n\n3,4\n", vec![1, 2, 6]),
            (b"a,b\n1,\"two\r\nlines\"\r\n\r\n3,4", vec![1, 2, 5]),
        ];
        for (text, expected) in cases {
            let rows = read_text(text, CsvOptions::default(), 1).unwrap();
            let numbers: Vec<u32> = rows.iter().map(|row| row.row_number).collect();
            assert_eq!(numbers, expected, "{:?}", String::from_utf8_lossy(text));
        }
    }

    #[test]
    fn an_invalid_utf8_record_is_handed_on_with_its_rejection() {
        let rows = read_text(
            b"a,b\n1,2\nbad\xff,x\n3,4\n\xc3,\xa9\n",
            CsvOptions::default(),
            1,
        )
        .unwrap();
        assert_eq!(rows.len(), 5);
        assert!(
            rows[4].rejection.is_some(),
            "a character split by a delimiter"
        );
        assert_eq!(rows[2].row_number, 3);
        assert_eq!(texts(&rows[2]), vec!["bad\u{fffd}", "x"]);
        let rejection = rows[2].rejection.as_ref().expect("the record is rejected");
        assert_eq!(rejection.reason, INVALID_UTF8);
        assert!(rejection.column.is_empty());
        assert!(rows[3].rejection.is_none());
    }

    #[test]
    fn the_delimiter_is_sniffed_from_the_first_lines() {
        let cases: [(&[u8], u8); 7] = [
            (b"a,b,c\n1,2,3\n", b','),
            (b"a;b;c\n1,5;2,5;3\n", b';'),
            (b"a\tb\n1\t2\n", b'\t'),
            (b"a|b\n\"x|y\"|2\n", b'|'),
            (b"name\nann\n", b','),
            (b"a;b\n1;2;3\n", b','),
            (b"title only\na;b\n1;2\n", b';'),
        ];
        for (index, (sample, expected)) in cases.into_iter().enumerate() {
            let header_row = if index == 6 { 2 } else { 1 };
            let found = sniff_delimiter(sample, true, b'"', header_row);
            assert_eq!(
                found as char,
                expected as char,
                "{:?}",
                String::from_utf8_lossy(sample)
            );
        }
        // the last record of a cut sample does not count
        assert_eq!(sniff_delimiter(b"a;b\n1;2\n3", false, b'"', 1), b';');
    }

    #[test]
    fn options_change_delimiter_quote_encoding_and_null() {
        let options = CsvOptions {
            delimiter: Some(b'|'),
            quote: b'\'',
            null_string: Some("\\N".to_string()),
            ..CsvOptions::default()
        };
        let rows = read_text(b"a|b\n'x|y'|\\N\n", options, 1).unwrap();
        assert_eq!(rows[1].cells, vec![Data::String("x|y".to_string())]);

        let latin1 = CsvOptions {
            encoding: Encoding::for_label(b"latin1"),
            ..CsvOptions::default()
        };
        let rows = read_text(b"name\nJos\xe9\n", latin1, 1).unwrap();
        assert_eq!(texts(&rows[1]), vec!["José"]);

        // a UTF-16 BOM wins over no --encoding and over a wrong one
        let utf16: Vec<u8> = [0xFF, 0xFE]
            .into_iter()
            .chain("n;m\nä;1\n".encode_utf16().flat_map(u16::to_le_bytes))
            .collect();
        for encoding in [None, Encoding::for_label(b"windows-1252")] {
            let options = CsvOptions {
                encoding,
                ..CsvOptions::default()
            };
            let rows = read_text(&utf16, options, 1).unwrap();
            assert_eq!(
                numbers_and_texts(&rows)[1],
                (2, vec!["ä".into(), "1".into()])
            );
        }
    }

    #[test]
    fn a_header_of_values_is_no_header() {
        let header = |cells: &[&str]| {
            cells
                .iter()
                .map(|cell| cell.to_string())
                .collect::<Vec<_>>()
        };
        let spec = SourceSpec {
            xlsx_reader: crate::source::XlsxReader::Fast,
            xls_reader: crate::source::XlsReader::Fast,
            path: "x.csv".into(),
            sheet: None,
            header_row: 1,
            csv: CsvOptions::default(),
        };
        for values in [&["1", "2.5"][..], &["2024-01-02", "-3", ""], &["12:30"]] {
            let error = check_header(&spec, &header(values))
                .unwrap_err()
                .to_string();
            assert_eq!(
                error,
                "x.csv has no header line: the first line of a CSV file must name the columns"
            );
        }
        for names in [&["id", "2024"][..], &["nan", "inf"], &["Q3 2024"]] {
            assert!(check_header(&spec, &header(names)).is_ok(), "{names:?}");
        }
    }

    #[test]
    fn a_record_larger_than_the_limit_is_an_error_naming_its_line() {
        let endless_quote = std::io::repeat(b'x').take(MAX_RECORD_BYTES as u64 + 10);
        let input = BufReader::new(Cursor::new(b"a\n\n\"".to_vec()).chain(endless_quote));
        let mut records = RecordReader::new(input, b',', b'"');
        assert_eq!(records.next_record().unwrap(), Some(1));
        let error = records.next_record().unwrap_err().to_string();
        assert_eq!(
            error,
            "the record on line 3 is larger than 64 MiB (an unclosed quote?)"
        );
    }
}
