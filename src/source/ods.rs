//! The .ods reader: streams `content.xml` out of the OpenDocument zip and hands each
//! non-empty cell of one sheet, with its 0-based (row, column) position, to the caller.
//!
//! calamine's ods reader parses every sheet into a dense grid when the file is opened, so a
//! single cell at the far corner of a sheet (AMJ1048576) asks it for a billion cells, and it
//! reads LibreOffice's error cells as plain text. This module owns the OpenDocument side of
//! reading instead: the sheet list (table names in document order, cells not decoded), the
//! row and column repeats (`table:number-rows-repeated`, `table:number-columns-repeated`),
//! and a cell's value, given as the same calamine [`Data`] variant calamine's reader would
//! give (so `convert` treats it the same), except that error cells become [`Data::Error`].
//! Empty repeats only move the position, so memory is one row whatever the sheet's extent.
//! It does not assemble rows, skip rows above the header or blank rows, or choose the sheet:
//! the parent module does that, and the cells go next into its `RowAssembler`.
//! Element names are matched with their conventional prefixes (`table:`, `office:`,
//! `text:`), as calamine does and as every writer we know emits them.

use std::borrow::Cow;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};
use calamine::{CellErrorType, Data};
use quick_xml::errors::IllFormedError;
use quick_xml::events::{BytesRef, BytesStart, Event};
use quick_xml::{Reader, XmlVersion};
use zip::ZipArchive;

use super::{
    MAX_CELL_TEXT_BYTES, MAX_COLUMNS, MAX_ROW_TEXT_BYTES, MAX_ROWS, MAX_SHEET_TEXT_BYTES,
    cell_name, describe_bytes, innermost_cause,
};
use crate::message::{quoted, quoted_value};

/// The part of the package that holds the sheets.
const CONTENT_XML: &str = "content.xml";

/// The package manifest, which marks encrypted parts.
const MANIFEST_XML: &str = "META-INF/manifest.xml";

/// Read buffer for the decompressed `content.xml`, in bytes.
const READ_BUFFER_BYTES: usize = 64 * 1024;

/// Most bytes the XML parser may hold for one event (a tag with its attributes, or a run
/// of text between two tags): eight times a cell's text limit, room for the longest cell
/// written with character references. Whitespace between elements is skipped, not held.
const MAX_EVENT_BYTES: usize = 8 * MAX_CELL_TEXT_BYTES;

/// The XML reader over a part of the package, holding each event to [`MAX_EVENT_BYTES`].
type XmlReader<R> = Reader<BoundedXml<R>>;

/// An open .ods package; each read streams `content.xml` again from the zip.
pub(crate) struct OdsWorkbook {
    path: PathBuf,
    archive: ZipArchive<BufReader<File>>,
}

impl OdsWorkbook {
    /// Opens the zip and checks that it has an unencrypted `content.xml`.
    pub(crate) fn open(path: &Path) -> anyhow::Result<Self> {
        let unreadable = || {
            format!(
                "cannot open {}: not a readable workbook (corrupt or truncated?)",
                crate::message::shown_path(path)
            )
        };
        let file = File::open(path)
            .with_context(|| format!("cannot open {}", crate::message::shown_path(path)))?;
        let mut archive = ZipArchive::new(BufReader::new(file))
            .map_err(|error| anyhow!(innermost_cause(&error)))
            .with_context(unreadable)?;
        if archive.index_for_name(CONTENT_XML).is_none() {
            bail!(
                "cannot open {}: not a readable workbook ({CONTENT_XML} is missing)",
                crate::message::shown_path(path)
            );
        }
        if is_encrypted(&mut archive) {
            bail!(
                "cannot open {}: it is password protected (save a copy without a password)",
                crate::message::shown_path(path)
            );
        }
        Ok(Self {
            path: path.to_path_buf(),
            archive,
        })
    }

    /// The sheet names in document order, for `pick_sheet`; cells are skipped, not decoded.
    pub(crate) fn sheet_names(&mut self) -> anyhow::Result<Vec<String>> {
        self.sheet_names_up_to(usize::MAX)
    }

    /// The first sheet's name only: the scan stops there instead of reading past every
    /// sheet's cells.
    pub(crate) fn first_sheet_name(&mut self) -> anyhow::Result<Vec<String>> {
        self.sheet_names_up_to(1)
    }

    fn sheet_names_up_to(&mut self, limit: usize) -> anyhow::Result<Vec<String>> {
        let path = crate::message::shown_path(&self.path);
        self.content()
            .and_then(|xml| read_sheet_names_up_to(xml, limit))
            .with_context(|| format!("cannot read the sheets of {path}"))
    }

    /// Streams the non-empty cells of `sheet_name` to `push`, row by row, until the sheet
    /// ends or `push` breaks.
    pub(crate) fn read_sheet(
        &mut self,
        sheet_name: &str,
        push: &mut dyn CellSink,
    ) -> anyhow::Result<()> {
        let path = crate::message::shown_path(&self.path);
        let context = || format!("cannot read sheet {} of {path}", quoted(sheet_name));
        let found = self
            .content()
            .and_then(|xml| read_sheet_cells(xml, sheet_name, push))
            .with_context(context)?;
        if !found {
            return Err(anyhow!("{CONTENT_XML} has no such sheet")).with_context(context);
        }
        Ok(())
    }

    fn content(&mut self) -> anyhow::Result<impl Read + '_> {
        self.archive
            .by_name(CONTENT_XML)
            .map_err(|error| anyhow!("{CONTENT_XML}: {}", innermost_cause(&error)))
    }
}

/// Whether the manifest marks any part as encrypted (a password-protected document).
///
/// A missing or unreadable manifest counts as "not encrypted": the manifest is not needed
/// to read the cells, and an encrypted `content.xml` still fails later as not well-formed.
fn is_encrypted<R: Read + std::io::Seek>(archive: &mut ZipArchive<R>) -> bool {
    let Ok(entry) = archive.by_name(MANIFEST_XML) else {
        return false;
    };
    let mut reader = xml_reader(entry);
    let mut buf = Vec::new();
    loop {
        match reader.read_event_into(&mut buf) {
            Ok(Event::Start(element) | Event::Empty(element))
                if element.name().as_ref() == "manifest:encryption-data" =>
            {
                return true;
            }
            Ok(Event::Eof) | Err(_) => return false,
            Ok(_) => buf.clear(),
        }
    }
}

/// Where the cells of a sheet go: each non-empty cell, and the end of each row (so the
/// receiver can finish a row without waiting for the next one: the header row is known
/// as soon as it ends, however long the rest of the file).
pub(crate) trait CellSink {
    /// One non-empty cell at its 0-based (row, column).
    fn cell(&mut self, position: (u32, u32), cell: Data) -> ControlFlow<()>;

    /// The row of the cells just given is complete.
    fn end_row(&mut self) -> ControlFlow<()> {
        ControlFlow::Continue(())
    }
}

impl<F: FnMut((u32, u32), Data) -> ControlFlow<()>> CellSink for F {
    fn cell(&mut self, position: (u32, u32), cell: Data) -> ControlFlow<()> {
        self(position, cell)
    }
}

/// Names of the `table:table` elements of `content.xml`, in document order.
#[cfg(test)]
fn read_sheet_names<R: Read>(xml: R) -> anyhow::Result<Vec<String>> {
    read_sheet_names_up_to(xml, usize::MAX)
}

/// Names of the first `limit` `table:table` elements of `content.xml`, in document order.
fn read_sheet_names_up_to<R: Read>(xml: R, limit: usize) -> anyhow::Result<Vec<String>> {
    let mut reader = xml_reader(xml);
    let mut buf = Vec::new();
    let mut skipped = Vec::new();
    let mut names = Vec::new();
    let mut in_spreadsheet = false;
    loop {
        let event = reader
            .read_event_into(&mut buf)
            .map_err(|error| xml_error(&reader, &error))?;
        match event {
            Event::Start(element) if element.name().as_ref() == "office:spreadsheet" => {
                in_spreadsheet = true;
            }
            Event::End(element) if element.name().as_ref() == "office:spreadsheet" => {
                return Ok(names);
            }
            Event::Start(element) if element.name().as_ref() == "table:table" => {
                names.extend(attribute(&element, "table:name")?);
                if names.len() >= limit {
                    return Ok(names);
                }
                skip_element(&mut reader, &mut skipped)?;
                skipped.clear();
            }
            Event::Empty(element) if element.name().as_ref() == "table:table" => {
                names.extend(attribute(&element, "table:name")?);
            }
            Event::Eof if in_spreadsheet => bail!("{CONTENT_XML} ends early (truncated?)"),
            Event::Eof => {
                bail!("{CONTENT_XML} holds no spreadsheet (is it another kind of document?)")
            }
            _ => {}
        }
        buf.clear();
    }
}

/// Streams the cells of the first `table:table` named `sheet_name` to `push`; `false` when
/// there is no such table.
fn read_sheet_cells<R: Read>(
    xml: R,
    sheet_name: &str,
    push: &mut dyn CellSink,
) -> anyhow::Result<bool> {
    let mut reader = xml_reader(xml);
    let mut buf = Vec::new();
    let mut skipped = Vec::new();
    loop {
        let event = reader
            .read_event_into(&mut buf)
            .map_err(|error| xml_error(&reader, &error))?;
        match event {
            Event::Start(element) if element.name().as_ref() == "table:table" => {
                if attribute(&element, "table:name")?.as_deref() == Some(sheet_name) {
                    buf.clear();
                    read_table(&mut reader, &mut buf, push)?;
                    return Ok(true);
                }
                skip_element(&mut reader, &mut skipped)?;
                skipped.clear();
            }
            // a sheet without rows
            Event::Empty(element)
                if element.name().as_ref() == "table:table"
                    && attribute(&element, "table:name")?.as_deref() == Some(sheet_name) =>
            {
                return Ok(true);
            }
            Event::End(element) if element.name().as_ref() == "office:spreadsheet" => {
                return Ok(false);
            }
            Event::Eof => return Ok(false),
            _ => {}
        }
        buf.clear();
    }
}

/// Reads the rows of the table whose start tag was just read, up to its end tag.
fn read_table<R: Read>(
    reader: &mut XmlReader<R>,
    buf: &mut Vec<u8>,
    push: &mut dyn CellSink,
) -> anyhow::Result<()> {
    let mut skipped = Vec::new();
    // the row's non-empty cells, kept to be pushed once per row repeat
    let mut cells: Vec<(u32, Data)> = Vec::new();
    let mut row_index: u32 = 0;
    let mut expanded = Expansion::default();
    loop {
        let event = reader
            .read_event_into(buf)
            .map_err(|error| xml_error(reader, &error))?;
        match event {
            Event::Start(element) if element.name().as_ref() == "table:table-row" => {
                let repeats = repeat_count(&element, "table:number-rows-repeated")?;
                cells.clear();
                let written = read_row(reader, row_index, &mut cells, &mut skipped)?;
                // a repeated non-empty row is that many rows (LibreOffice writes identical
                // consecutive rows this way); an empty one only moves the position, so
                // repeated empty rows cost nothing however many they claim to be
                if !cells.is_empty() {
                    let end = u64::from(row_index) + u64::from(repeats);
                    if end > u64::from(MAX_ROWS) {
                        bail!(
                            "row {} holds values repeated over {repeats} rows, past the last row a sheet may have ({MAX_ROWS})",
                            u64::from(row_index) + 1
                        );
                    }
                    // what the repeats expand to is checked before the first copy is made
                    expanded.add_row(row_index, &cells, written, repeats)?;
                    let end = end as u32; // at most MAX_ROWS, checked above
                    for repeat_index in row_index..end {
                        let flow = if repeat_index + 1 == end {
                            // the last (usually the only) copy takes the cells themselves
                            push_row(push, repeat_index, cells.drain(..))
                        } else {
                            push_row(push, repeat_index, cells.iter().cloned())
                        };
                        if flow.is_break() {
                            return Ok(());
                        }
                    }
                }
                row_index = row_index.saturating_add(repeats);
            }
            Event::Empty(element) if element.name().as_ref() == "table:table-row" => {
                row_index =
                    row_index.saturating_add(repeat_count(&element, "table:number-rows-repeated")?);
            }
            // rows inside these groups are rows of the sheet like any other
            Event::Start(element)
                if matches!(
                    element.name().as_ref(),
                    "table:table-header-rows" | "table:table-row-group" | "table:table-rows"
                ) => {}
            // columns, shapes, forms, named ranges, sources: nothing that holds cells
            Event::Start(_) => {
                skip_element(reader, &mut skipped)?;
                skipped.clear();
            }
            Event::End(element) if element.name().as_ref() == "table:table" => return Ok(()),
            Event::Eof => bail!("{CONTENT_XML} ends inside the sheet (truncated?)"),
            _ => {}
        }
        buf.clear();
    }
}

/// Most cells the repeats of one sheet (`table:number-columns-repeated` and
/// `table:number-rows-repeated` on cells and rows that hold a value) may add to what its
/// markup writes: 64 Mi, some 20 s of reading. LibreOffice writes identical neighbours
/// that way, so a column of one value down a million rows is a million cells; a sheet
/// whose repeats claim billions (a row of 16,384 values repeated a million times) is
/// refused at once, before the first copy.
const MAX_REPEATED_CELLS: u64 = 1 << 26;

/// What a sheet's rows expand to once their repeats are applied, checked against
/// [`MAX_SHEET_TEXT_BYTES`] and [`MAX_REPEATED_CELLS`] before the copies are made.
#[derive(Debug, Default)]
struct Expansion {
    text_bytes: u64,
    repeated_cells: u64,
}

impl Expansion {
    /// Counts the row at `row_index` whose `cells` (`written` of them written as cell
    /// elements, the rest their column repeats) stand for `repeats` rows.
    fn add_row(
        &mut self,
        row_index: u32,
        cells: &[(u32, Data)],
        written: usize,
        repeats: u32,
    ) -> anyhow::Result<()> {
        let copies = u64::from(repeats);
        let row_text_bytes: u64 = cells
            .iter()
            .map(|(_, value)| value_text_bytes(value) as u64)
            .sum();
        self.text_bytes = self
            .text_bytes
            .saturating_add(row_text_bytes.saturating_mul(copies));
        if self.text_bytes > MAX_SHEET_TEXT_BYTES {
            bail!(
                "row {} repeated over {repeats} rows takes the sheet past {} of text: no workbook sheet holds that much (one long value repeated over many rows?)",
                u64::from(row_index) + 1,
                describe_bytes(MAX_SHEET_TEXT_BYTES as usize)
            );
        }
        let expanded_cells = (cells.len() as u64).saturating_mul(copies);
        self.repeated_cells = self
            .repeated_cells
            .saturating_add(expanded_cells.saturating_sub(written as u64));
        if self.repeated_cells > MAX_REPEATED_CELLS {
            bail!(
                "row {} repeated over {repeats} rows takes the sheet's repeated cells past {MAX_REPEATED_CELLS}: no workbook sheet repeats that much (values repeated over every column and row?)",
                u64::from(row_index) + 1
            );
        }
        Ok(())
    }
}

/// Pushes one row's cells at `row_index` until `push` breaks.
fn push_row(
    push: &mut dyn CellSink,
    row_index: u32,
    cells: impl Iterator<Item = (u32, Data)>,
) -> ControlFlow<()> {
    for (column_index, cell) in cells {
        push.cell((row_index, column_index), cell)?;
    }
    push.end_row()
}

/// Reads the cells of one `table:table-row` whose start tag was just read, up to its end
/// tag, into `cells` as (column index, value); empty cells only move the column. Gives the
/// number of cell elements that held a value (`cells` holds their column repeats too).
fn read_row<R: Read>(
    reader: &mut XmlReader<R>,
    row_index: u32,
    cells: &mut Vec<(u32, Data)>,
    buf: &mut Vec<u8>,
) -> anyhow::Result<usize> {
    let mut content = Vec::new();
    let mut column_index: u32 = 0;
    let mut row_text_bytes = 0_usize;
    let mut written = 0;
    loop {
        let event = reader
            .read_event_into(buf)
            .map_err(|error| xml_error(reader, &error))?;
        let (element, has_content) = match event {
            Event::Start(element) => (element, true),
            Event::Empty(element) => (element, false),
            Event::End(element) if element.name().as_ref() == "table:table-row" => {
                return Ok(written);
            }
            Event::Eof => bail!(
                "{CONTENT_XML} ends inside row {} (truncated?)",
                u64::from(row_index) + 1
            ),
            _ => {
                buf.clear();
                continue;
            }
        };
        let cell_element = match element.name().as_ref() {
            "table:table-cell" => "table:table-cell",
            // a cell hidden under a merged one still takes its position
            "table:covered-table-cell" => "table:covered-table-cell",
            _ => {
                if has_content {
                    skip_element(reader, &mut content)?;
                    content.clear();
                }
                buf.clear();
                continue;
            }
        };
        let at_cell = || format!("cell {}", cell_name(row_index, column_index));
        let attributes = CellAttributes::parse(&element).with_context(at_cell)?;
        let repeats = attributes.column_repeats;
        let value = read_cell(reader, attributes, cell_element, has_content, &mut content)
            .with_context(at_cell)?;
        content.clear();
        if let Some(value) = value {
            let end = u64::from(column_index) + u64::from(repeats);
            if end > u64::from(MAX_COLUMNS) {
                bail!(
                    "cell {}: a value repeated over {repeats} columns reaches past the last column a sheet may have (XFD, {MAX_COLUMNS})",
                    cell_name(row_index, column_index)
                );
            }
            // checked before the copies are made: one long string repeated across the row
            // must not become gigabytes
            let text_bytes = value_text_bytes(&value).saturating_mul(repeats as usize);
            row_text_bytes = row_text_bytes.saturating_add(text_bytes);
            if row_text_bytes > MAX_ROW_TEXT_BYTES {
                bail!(
                    "row {} holds more than {} MiB of text: no workbook row is that long (one value repeated across the row?)",
                    u64::from(row_index) + 1,
                    MAX_ROW_TEXT_BYTES >> 20
                );
            }
            written += 1;
            cells.extend((column_index..end as u32).map(|index| (index, value.clone())));
        }
        column_index = column_index.saturating_add(repeats);
        buf.clear();
    }
}

/// The bytes of text a value holds, for the row's text limit.
fn value_text_bytes(value: &Data) -> usize {
    match value {
        Data::String(text) | Data::DateTimeIso(text) | Data::DurationIso(text) => text.len(),
        _ => 0,
    }
}

/// The attributes of a cell that decide its value and width, borrowed from its start tag:
/// every cell element is parsed, so nothing is allocated until a value is built.
#[derive(Debug)]
struct CellAttributes<'a> {
    /// `table:number-columns-repeated`, at least 1.
    column_repeats: u32,
    value_type: Option<Cow<'a, str>>,
    value: Option<Cow<'a, str>>,
    string_value: Option<Cow<'a, str>>,
    boolean_value: Option<Cow<'a, str>>,
    date_value: Option<Cow<'a, str>>,
    time_value: Option<Cow<'a, str>>,
    /// LibreOffice's `calcext:value-type="error"`: the text is an error code.
    is_error: bool,
    has_formula: bool,
}

impl<'a> CellAttributes<'a> {
    fn parse(element: &'a BytesStart<'_>) -> anyhow::Result<Self> {
        let mut parsed = Self {
            column_repeats: 1,
            value_type: None,
            value: None,
            string_value: None,
            boolean_value: None,
            date_value: None,
            time_value: None,
            is_error: false,
            has_formula: false,
        };
        for attribute in element.attributes().with_checks(false) {
            let attribute = attribute.map_err(|error| anyhow!("bad attribute: {error}"))?;
            let slot = match attribute.key.as_ref() {
                "table:number-columns-repeated" => {
                    parsed.column_repeats =
                        parse_repeat_count("table:number-columns-repeated", &attribute.value)?;
                    continue;
                }
                "office:value-type" => &mut parsed.value_type,
                "office:value" => &mut parsed.value,
                "office:string-value" => &mut parsed.string_value,
                "office:boolean-value" => &mut parsed.boolean_value,
                "office:date-value" => &mut parsed.date_value,
                "office:time-value" => &mut parsed.time_value,
                "calcext:value-type" => {
                    parsed.is_error = attribute.value == "error";
                    continue;
                }
                "table:formula" => {
                    parsed.has_formula = true;
                    continue;
                }
                _ => continue,
            };
            let value = attribute
                .normalized_value(XmlVersion::Implicit1_0)
                .map_err(|error| anyhow!("bad attribute {}: {error}", attribute.key.as_ref()))?;
            if value.len() > MAX_CELL_TEXT_BYTES {
                bail!(
                    "its {} is longer than the {} MiB a workbook cell may hold (Excel's own limit is 32,767 characters)",
                    attribute.key.as_ref(),
                    MAX_CELL_TEXT_BYTES >> 20
                );
            }
            *slot = Some(value);
        }
        Ok(parsed)
    }
}

/// The value of the cell whose start tag is `element`, consuming its content when it has
/// any; `None` for an empty cell.
///
/// The variants are calamine's for .ods: float, percentage and currency -> `Float`
/// (`office:value`); string -> `String` (`office:string-value`, else the text); boolean ->
/// `Bool`; date -> `DateTimeIso`; time -> `DurationIso`. A formula cell gives its cached
/// value. An error cell (`calcext:value-type="error"`, or a formula whose cached text is an
/// error code) -> `Error`, so `convert` rejects its row as it does for xlsx.
fn read_cell<R: Read>(
    reader: &mut XmlReader<R>,
    attributes: CellAttributes<'_>,
    cell_element: &'static str,
    has_content: bool,
    buf: &mut Vec<u8>,
) -> anyhow::Result<Option<Data>> {
    let is_string = attributes.value_type.as_deref() == Some("string");
    let needs_text = attributes.is_error || (is_string && attributes.string_value.is_none());
    let text = match (has_content, needs_text) {
        (true, true) => Some(read_cell_text(reader, cell_element, buf)?),
        (true, false) => {
            skip_element(reader, buf)?;
            None
        }
        (false, _) => None,
    };
    if attributes.is_error {
        let code = text
            .as_deref()
            .filter(|code| !code.is_empty())
            .or(attributes.string_value.as_deref());
        // LibreOffice's own codes (Err:502, ...) have no Excel name: #VALUE! is Excel's
        // generic one, and LibreOffice maps most of them to it when it saves .xlsx
        let error = code.and_then(error_code).unwrap_or(CellErrorType::Value);
        return Ok(Some(Data::Error(error)));
    }
    let value = match attributes.value_type.as_deref() {
        Some("float" | "percentage" | "currency") => match attributes.value {
            Some(number) => Some(Data::Float(number.trim().parse().map_err(|_| {
                anyhow!("office:value {} is not a number", quoted_value(&number))
            })?)),
            None => None,
        },
        Some("string") => attributes
            .string_value
            .map(Cow::into_owned)
            .or(text)
            .map(Data::String),
        Some("boolean") => attributes
            .boolean_value
            .map(|value| Data::Bool(matches!(value.trim(), "true" | "TRUE" | "1"))),
        Some("date") => attributes
            .date_value
            .map(|date| Data::DateTimeIso(date.into_owned())),
        Some("time") => attributes
            .time_value
            .map(|time| Data::DurationIso(time.into_owned())),
        _ => None,
    };
    // older writers store a formula's error result as its text, without calcext
    if attributes.has_formula
        && let Some(Data::String(text)) = &value
        && let Some(error) = error_code(text)
    {
        return Ok(Some(Data::Error(error)));
    }
    Ok(value)
}

/// The Excel error a code such as `#DIV/0!` names.
fn error_code(code: &str) -> Option<CellErrorType> {
    Some(match code.trim() {
        "#DIV/0!" => CellErrorType::Div0,
        "#N/A" => CellErrorType::NA,
        "#NAME?" => CellErrorType::Name,
        "#NULL!" => CellErrorType::Null,
        "#NUM!" => CellErrorType::Num,
        "#REF!" => CellErrorType::Ref,
        "#VALUE!" => CellErrorType::Value,
        _ => return None,
    })
}

/// The text of a cell, up to the cell's end tag: its paragraphs joined with "\n", with
/// `text:s`, `text:tab` and `text:line-break` expanded and nested spans and links read
/// through. Only `text:` elements are read into: comments (`office:annotation`), shapes and
/// anything else in the cell are not part of its value.
fn read_cell_text<R: Read>(
    reader: &mut XmlReader<R>,
    cell_element: &'static str,
    buf: &mut Vec<u8>,
) -> anyhow::Result<String> {
    let text = read_cell_text_unbounded(reader, cell_element, buf);
    // back to markup: whitespace between elements is skipped again
    set_text_mode(reader, false);
    text
}

fn read_cell_text_unbounded<R: Read>(
    reader: &mut XmlReader<R>,
    cell_element: &'static str,
    buf: &mut Vec<u8>,
) -> anyhow::Result<String> {
    let mut text = String::new();
    let mut skipped = Vec::new();
    let mut paragraph_count = 0_usize;
    // how many text:p / text:h are open: text outside them is markup whitespace
    let mut paragraph_depth = 0_usize;
    loop {
        if text.len() > MAX_CELL_TEXT_BYTES {
            bail!(
                "its text is longer than the {} MiB a workbook cell may hold (Excel's own limit is 32,767 characters)",
                MAX_CELL_TEXT_BYTES >> 20
            );
        }
        buf.clear();
        // inside a paragraph every space is text; outside, whitespace is layout
        set_text_mode(reader, paragraph_depth > 0);
        let event = reader
            .read_event_into(buf)
            .map_err(|error| xml_error(reader, &error))?;
        match event {
            Event::Start(element) => match element.name().as_ref() {
                "text:p" | "text:h" => {
                    if paragraph_count > 0 {
                        text.push('\n');
                    }
                    paragraph_count += 1;
                    paragraph_depth += 1;
                }
                name if name.starts_with("text:") => push_text_element(&mut text, &element)?,
                _ => {
                    set_text_mode(reader, false);
                    skip_element(reader, &mut skipped)?;
                    skipped.clear();
                }
            },
            Event::Empty(element) => match element.name().as_ref() {
                "text:p" | "text:h" => {
                    if paragraph_count > 0 {
                        text.push('\n');
                    }
                    paragraph_count += 1;
                }
                _ => push_text_element(&mut text, &element)?,
            },
            Event::End(element) => match element.name().as_ref() {
                "text:p" | "text:h" => paragraph_depth = paragraph_depth.saturating_sub(1),
                name if name == cell_element => return Ok(text),
                _ => {}
            },
            Event::Text(content) if paragraph_depth > 0 => text.push_str(&content.xml10_content()),
            Event::CData(content) if paragraph_depth > 0 => {
                text.push_str(&content.xml10_content());
            }
            Event::GeneralRef(reference) if paragraph_depth > 0 => {
                push_reference(&mut text, &reference)?;
            }
            Event::Eof => bail!("{CONTENT_XML} ends inside a cell (truncated?)"),
            _ => {}
        }
    }
}

/// Appends what a text element stands for: `text:s` spaces (`text:c` of them), a tab or a
/// line break; other text elements add nothing themselves.
fn push_text_element(text: &mut String, element: &BytesStart<'_>) -> anyhow::Result<()> {
    match element.name().as_ref() {
        "text:s" => {
            let count = match attribute(element, "text:c")? {
                Some(count) => count
                    .trim()
                    .parse::<usize>()
                    .map_err(|_| anyhow!("text:c {} is not a count", quoted(&count)))?,
                None => 1,
            };
            // the claimed count is checked before any space is added
            if text.len().saturating_add(count) > MAX_CELL_TEXT_BYTES {
                bail!(
                    "its text is longer than the {} MiB a workbook cell may hold (Excel's own limit is 32,767 characters)",
                    MAX_CELL_TEXT_BYTES >> 20
                );
            }
            text.extend(std::iter::repeat_n(' ', count));
        }
        "text:tab" => text.push('\t'),
        "text:line-break" => text.push('\n'),
        _ => {}
    }
    Ok(())
}

/// Appends a character or predefined entity reference (`&#233;`, `&amp;`).
fn push_reference(text: &mut String, reference: &BytesRef<'_>) -> anyhow::Result<()> {
    if let Some(character) = reference
        .resolve_char_ref()
        .map_err(|error| anyhow!("bad character reference: {error}"))?
    {
        text.push(character);
        return Ok(());
    }
    match quick_xml::escape::resolve_predefined_entity(reference) {
        Some(replacement) => {
            text.push_str(replacement);
            Ok(())
        }
        None => bail!("unknown entity &{};", &**reference),
    }
}

/// An attribute's value, unescaped.
fn attribute(element: &BytesStart<'_>, name: &str) -> anyhow::Result<Option<String>> {
    let found = element
        .try_get_attribute(name)
        .map_err(|error| anyhow!("bad attribute: {error}"))?;
    found
        .map(|attribute| {
            attribute
                .normalized_value(XmlVersion::Implicit1_0)
                .map(|value| value.into_owned())
                .map_err(|error| anyhow!("bad attribute {name}: {error}"))
        })
        .transpose()
}

/// A repeat count (`table:number-rows-repeated`, `table:number-columns-repeated`); 1 when
/// absent.
fn repeat_count(element: &BytesStart<'_>, name: &str) -> anyhow::Result<u32> {
    match element
        .try_get_attribute(name)
        .map_err(|error| anyhow!("bad attribute: {error}"))?
    {
        Some(count) => parse_repeat_count(name, &count.value),
        None => Ok(1),
    }
}

fn parse_repeat_count(name: &str, count: &str) -> anyhow::Result<u32> {
    // positiveInteger in the schema: a 0 is read as 1 so the position still moves, and a
    // count past u32 is cut (positions stop at MAX_ROWS and MAX_COLUMNS anyway)
    count
        .trim()
        .parse::<u64>()
        .map(|count| u32::try_from(count.max(1)).unwrap_or(u32::MAX))
        .map_err(|_| anyhow!("{name} {} is not a count", quoted_value(count)))
}

/// An XML reader over `input` that skips whitespace between elements (1 GB of it costs
/// time, not memory) and holds each event to [`MAX_EVENT_BYTES`].
fn xml_reader<R: Read>(input: R) -> XmlReader<R> {
    let mut reader = Reader::from_reader(BoundedXml::new(input));
    reader.config_mut().trim_text_start = true;
    reader
}

/// Whether the reader is inside a paragraph, where whitespace is text to keep (and held,
/// within [`MAX_EVENT_BYTES`]), or in markup, where it is skipped.
fn set_text_mode<R: Read>(reader: &mut XmlReader<R>, in_text: bool) {
    reader.config_mut().trim_text_start = !in_text;
    reader.get_mut().in_text = in_text;
}

/// Skips the element whose start tag was just read, up to its end tag, one event at a
/// time (unlike `read_to_end_into`, which holds whitespace: it turns trimming off).
fn skip_element<R: Read>(reader: &mut XmlReader<R>, buf: &mut Vec<u8>) -> anyhow::Result<()> {
    let mut depth = 0_usize;
    loop {
        buf.clear();
        match reader
            .read_event_into(buf)
            .map_err(|error| xml_error(reader, &error))?
        {
            Event::Start(_) => depth += 1,
            Event::End(_) if depth == 0 => return Ok(()),
            Event::End(_) => depth -= 1,
            Event::Eof => bail!("{CONTENT_XML} ends early (truncated?)"),
            _ => {}
        }
    }
}

/// A buffered reader that counts the bytes the XML parser would hold for one event and
/// fails once they pass [`MAX_EVENT_BYTES`]: quick-xml keeps a whole tag, or a whole run of
/// text, in memory, and a hostile file can make either gigabytes long.
///
/// Counting happens as the parser consumes bytes, so it follows the parser exactly: in a
/// tag every byte counts (a `>` inside quotes does not end it); between tags, in text
/// mode every byte counts, in markup mode only from the first non-whitespace byte on (the
/// parser skips leading whitespace without holding it).
struct BoundedXml<R> {
    inner: R,
    buffer: Box<[u8]>,
    start: usize,
    end: usize,
    /// Set by [`set_text_mode`]: inside a paragraph.
    in_text: bool,
    in_tag: bool,
    /// The quote that opened the attribute value being read, inside a tag.
    quote: Option<u8>,
    /// Whether the tag being read is a comment, CDATA or declaration (`<!`, `<?`): no
    /// attribute quotes there.
    in_special_tag: bool,
    at_tag_start: bool,
    /// Whether a non-whitespace byte was seen since the last tag (markup mode).
    seen_text: bool,
    /// Bytes the parser holds for the current event.
    held: usize,
    too_long: bool,
}

/// The error [`BoundedXml`] fails with: one event past [`MAX_EVENT_BYTES`].
#[derive(Debug)]
struct EventTooLong;

impl std::fmt::Display for EventTooLong {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            formatter,
            "more than {} MiB of markup or text without a break",
            MAX_EVENT_BYTES >> 20
        )
    }
}

impl std::error::Error for EventTooLong {}

impl<R: Read> BoundedXml<R> {
    fn new(inner: R) -> Self {
        Self {
            inner,
            buffer: vec![0; READ_BUFFER_BYTES].into_boxed_slice(),
            start: 0,
            end: 0,
            in_text: false,
            in_tag: false,
            quote: None,
            in_special_tag: false,
            at_tag_start: false,
            seen_text: false,
            held: 0,
            too_long: false,
        }
    }

    fn count(&mut self, consumed: usize) {
        let mut rest = &self.buffer[self.start..self.start + consumed];
        while !rest.is_empty() {
            if self.in_tag {
                let byte = rest[0];
                rest = &rest[1..];
                self.held += 1;
                if std::mem::take(&mut self.at_tag_start) {
                    self.in_special_tag = matches!(byte, b'!' | b'?');
                }
                match (self.quote, byte) {
                    (Some(quote), _) if byte == quote => self.quote = None,
                    (Some(_), _) => {}
                    (None, b'"' | b'\'') if !self.in_special_tag => self.quote = Some(byte),
                    (None, b'>') => {
                        self.in_tag = false;
                        self.held = 0;
                        self.seen_text = false;
                    }
                    (None, _) => {}
                }
                continue;
            }
            // between tags: up to the next '<' at once
            let text_end = memchr::memchr(b'<', rest).unwrap_or(rest.len());
            let text = &rest[..text_end];
            if self.in_text || self.seen_text {
                self.held += text.len();
            } else if let Some(first) = text.iter().position(|byte| !byte.is_ascii_whitespace()) {
                self.seen_text = true;
                self.held += text.len() - first;
            }
            rest = &rest[text_end..];
            if let Some(rest_after) = rest.strip_prefix(b"<") {
                self.in_tag = true;
                self.at_tag_start = true;
                self.held = 1;
                rest = rest_after;
            }
        }
        if self.held > MAX_EVENT_BYTES {
            self.too_long = true;
        }
    }
}

impl<R: Read> Read for BoundedXml<R> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let available = self.fill_buf()?;
        let count = available.len().min(out.len());
        out[..count].copy_from_slice(&available[..count]);
        self.consume(count);
        Ok(count)
    }
}

impl<R: Read> BufRead for BoundedXml<R> {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        if self.too_long {
            return Err(std::io::Error::other(EventTooLong));
        }
        if self.start == self.end {
            self.start = 0;
            self.end = self.inner.read(&mut self.buffer)?;
        }
        Ok(&self.buffer[self.start..self.end])
    }

    fn consume(&mut self, amount: usize) {
        let amount = amount.min(self.end - self.start);
        self.count(amount);
        self.start += amount;
    }
}

/// A quick-xml error as one line: a decompression failure, or where the XML breaks.
fn xml_error<R>(reader: &Reader<R>, error: &quick_xml::Error) -> anyhow::Error {
    match error {
        quick_xml::Error::Io(io_error)
            if io_error
                .get_ref()
                .is_some_and(|inner| inner.is::<EventTooLong>()) =>
        {
            anyhow!(
                "{CONTENT_XML} holds {EventTooLong} near byte {} (no cell is that long: a broken or hostile file)",
                reader.buffer_position()
            )
        }
        quick_xml::Error::Io(io_error) => anyhow!(
            "{CONTENT_XML} cannot be decompressed (corrupt or truncated?): {}",
            innermost_cause(io_error.as_ref())
        ),
        quick_xml::Error::IllFormed(IllFormedError::MissingEndTag(_)) => {
            anyhow!("{CONTENT_XML} ends early (truncated?): {error}")
        }
        _ => {
            // skipping a subtree does not record where it failed
            let position = match reader.error_position() {
                0 => reader.buffer_position(),
                position => position,
            };
            // the message quotes the broken markup, which may hold any character
            let mut message = String::new();
            for character in error.to_string().chars() {
                if character.is_control() {
                    message.extend(character.escape_default());
                } else {
                    message.push(character);
                }
            }
            anyhow!("{CONTENT_XML} is corrupt: not well-formed near byte {position}: {message}")
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    /// A content.xml with one table per (name, rows XML).
    fn content_xml(tables: &[(&str, &str)]) -> String {
        let tables: String = tables
            .iter()
            .map(|(name, rows)| {
                format!(
                    r#"<table:table table:name="{name}"><table:table-column table:number-columns-repeated="3"/>{rows}</table:table>"#
                )
            })
            .collect();
        format!(
            r#"<?xml version="1.0" encoding="UTF-8"?><office:document-content xmlns:office="urn:oasis:names:tc:opendocument:xmlns:office:1.0" xmlns:table="urn:oasis:names:tc:opendocument:xmlns:table:1.0" xmlns:text="urn:oasis:names:tc:opendocument:xmlns:text:1.0" xmlns:calcext="urn:org:documentfoundation:names:experimental:calc:xmlns:calcext:1.0"><office:body><office:spreadsheet>{tables}<table:named-expressions/></office:spreadsheet></office:body></office:document-content>"#
        )
    }

    /// Every cell pushed for sheet "S" whose rows are `rows`.
    fn read(rows: &str) -> anyhow::Result<Vec<((u32, u32), Data)>> {
        let xml = content_xml(&[("S", rows)]);
        let mut cells = Vec::new();
        let found = read_sheet_cells(
            xml.as_bytes(),
            "S",
            &mut |position: (u32, u32), cell: Data| {
                cells.push((position, cell));
                ControlFlow::Continue(())
            },
        )?;
        assert!(found, "sheet S is in the test XML");
        Ok(cells)
    }

    fn text(value: &str) -> Data {
        Data::String(value.to_string())
    }

    fn string_cell(paragraphs: &str) -> String {
        format!(
            r#"<table:table-cell office:value-type="string" calcext:value-type="string">{paragraphs}</table:table-cell>"#
        )
    }

    fn row(cells: &str) -> String {
        format!("<table:table-row>{cells}</table:table-row>")
    }

    #[test]
    fn cell_values_are_calamines_variants() {
        let cases: Vec<(&str, String, Option<Data>)> = vec![
            (
                "float",
                r#"<table:table-cell office:value-type="float" office:value="3.25"><text:p>3,25</text:p></table:table-cell>"#.into(),
                Some(Data::Float(3.25)),
            ),
            (
                "percentage",
                r#"<table:table-cell office:value-type="percentage" office:value="0.5"><text:p>50%</text:p></table:table-cell>"#.into(),
                Some(Data::Float(0.5)),
            ),
            (
                "currency",
                r#"<table:table-cell office:value-type="currency" office:currency="EUR" office:value="-12.5"/>"#.into(),
                Some(Data::Float(-12.5)),
            ),
            (
                "float without a value",
                r#"<table:table-cell office:value-type="float"/>"#.into(),
                None,
            ),
            (
                "boolean true",
                r#"<table:table-cell office:value-type="boolean" office:boolean-value="true"><text:p>TRUE</text:p></table:table-cell>"#.into(),
                Some(Data::Bool(true)),
            ),
            (
                "boolean false",
                r#"<table:table-cell office:value-type="boolean" office:boolean-value="false"/>"#.into(),
                Some(Data::Bool(false)),
            ),
            (
                "date",
                r#"<table:table-cell office:value-type="date" office:date-value="2024-02-29"><text:p>29/02/24</text:p></table:table-cell>"#.into(),
                Some(Data::DateTimeIso("2024-02-29".into())),
            ),
            (
                "datetime",
                r#"<table:table-cell office:value-type="date" office:date-value="2024-02-29T13:45:30"/>"#.into(),
                Some(Data::DateTimeIso("2024-02-29T13:45:30".into())),
            ),
            (
                "time",
                r#"<table:table-cell office:value-type="time" office:time-value="PT13H45M30S"/>"#.into(),
                Some(Data::DurationIso("PT13H45M30S".into())),
            ),
            (
                "string from its text",
                string_cell("<text:p>Bob, &quot;the&quot; builder &amp; caf&#233;</text:p>"),
                Some(text("Bob, \"the\" builder & café")),
            ),
            (
                "string-value wins over the text",
                r#"<table:table-cell table:formula="of:=&quot;ab&quot;&amp;&quot;cd&quot;" office:value-type="string" office:string-value="abcd"><text:p>shown</text:p></table:table-cell>"#.into(),
                Some(text("abcd")),
            ),
            (
                "formula gives its cached number",
                r#"<table:table-cell table:formula="of:=13/4" office:value-type="float" office:value="3.25"><text:p>3.25</text:p></table:table-cell>"#.into(),
                Some(Data::Float(3.25)),
            ),
            (
                "text without a value type is empty",
                "<table:table-cell><text:p>orphan</text:p></table:table-cell>".into(),
                None,
            ),
            (
                "empty string",
                string_cell(""),
                None,
            ),
        ];
        for (label, cell, expected) in cases {
            let got = read(&row(&cell)).unwrap_or_else(|error| panic!("{label}: {error:#}"));
            let expected: Vec<_> = expected.into_iter().map(|data| ((0, 0), data)).collect();
            // an empty string is pushed and dropped later by the row assembler
            let got: Vec<_> = got
                .into_iter()
                .filter(|(_, cell)| !matches!(cell, Data::String(text) if text.is_empty()))
                .collect();
            assert_eq!(got, expected, "{label}");
        }
    }

    #[test]
    fn text_keeps_spaces_tabs_line_breaks_and_paragraphs() {
        let cases = [
            (
                "leading and trailing spaces",
                r#"<text:p><text:s text:c="2"/>Alice <text:s/></text:p>"#,
                "  Alice  ",
            ),
            (
                "whitespace only",
                r#"<text:p><text:s text:c="3"/></text:p>"#,
                "   ",
            ),
            ("tab", "<text:p>a<text:tab/>b</text:p>", "a\tb"),
            (
                "line break",
                "<text:p>a<text:line-break/>b</text:p>",
                "a\nb",
            ),
            (
                "paragraphs",
                "<text:p>line one</text:p><text:p>line two</text:p>",
                "line one\nline two",
            ),
            (
                "empty paragraph between",
                "<text:p>a</text:p><text:p/><text:p>b</text:p>",
                "a\n\nb",
            ),
            (
                "spans and links",
                r#"<text:p>x <text:span text:style-name="T1">bold <text:a xlink:href="https://e.org">link</text:a></text:span>!</text:p>"#,
                "x bold link!",
            ),
            (
                "comment is not the value",
                "<office:annotation><text:p>a note</text:p></office:annotation><text:p>value</text:p>",
                "value",
            ),
            (
                "markup whitespace is not the value",
                "\n  <text:p>value</text:p>\n",
                "value",
            ),
            (
                "literal spaces are kept",
                "<text:p>  two  </text:p>",
                "  two  ",
            ),
        ];
        for (label, paragraphs, expected) in cases {
            let got = read(&row(&string_cell(paragraphs)))
                .unwrap_or_else(|error| panic!("{label}: {error:#}"));
            assert_eq!(got, vec![((0, 0), text(expected))], "{label}");
        }
    }

    #[test]
    fn error_cells_become_excel_errors() {
        let libreoffice = |formula: &str, shown: &str| {
            format!(
                r#"<table:table-cell table:formula="{formula}" office:value-type="string" office:string-value="" calcext:value-type="error"><text:p>{shown}</text:p></table:table-cell>"#
            )
        };
        let cases = [
            ("div0", libreoffice("of:=1/0", "#DIV/0!"), CellErrorType::Div0),
            ("na", libreoffice("of:=NA()", "#N/A"), CellErrorType::NA),
            (
                "value",
                libreoffice("of:=&quot;a&quot;+1", "#VALUE!"),
                CellErrorType::Value,
            ),
            ("ref", libreoffice("of:=#REF!", "#REF!"), CellErrorType::Ref),
            ("name", libreoffice("of:=nope()", "#NAME?"), CellErrorType::Name),
            ("num", libreoffice("of:=SQRT(-1)", "#NUM!"), CellErrorType::Num),
            ("null", libreoffice("of:=A1 B2", "#NULL!"), CellErrorType::Null),
            (
                "libreoffice-only code",
                libreoffice("of:=1+", "Err:502"),
                CellErrorType::Value,
            ),
            (
                "formula with an error code as its text, no calcext",
                r#"<table:table-cell table:formula="of:=1/0" office:value-type="string"><text:p>#DIV/0!</text:p></table:table-cell>"#.into(),
                CellErrorType::Div0,
            ),
            (
                "formula with an error code as its string-value",
                r##"<table:table-cell table:formula="of:=NA()" office:value-type="string" office:string-value="#N/A"/>"##.into(),
                CellErrorType::NA,
            ),
        ];
        for (label, cell, expected) in cases {
            let got = read(&row(&cell)).unwrap_or_else(|error| panic!("{label}: {error:#}"));
            assert_eq!(got, vec![((0, 0), Data::Error(expected))], "{label}");
        }
        // typed, not computed: the text "#N/A" in a plain string cell stays text
        let typed = read(&row(&string_cell("<text:p>#N/A</text:p>"))).unwrap();
        assert_eq!(typed, vec![((0, 0), text("#N/A"))]);
    }

    #[test]
    fn repeats_and_covered_cells_move_the_position() {
        let one = |value: &str| {
            format!(r#"<table:table-cell office:value-type="float" office:value="{value}"/>"#)
        };
        // (label, rows XML, positions of the cells read: each holds 1)
        type Case = (&'static str, String, Vec<(u32, u32)>);
        let cases: Vec<Case> = vec![
            (
                "empty repeated cells advance the column",
                row(&format!(
                    r#"<table:table-cell table:number-columns-repeated="5"/>{}"#,
                    one("1")
                )),
                vec![(0, 5)],
            ),
            (
                "a repeated value is expanded",
                row(&format!(
                    r#"<table:table-cell office:value-type="float" office:value="1" table:number-columns-repeated="3"/>{}"#,
                    one("1")
                )),
                vec![(0, 0), (0, 1), (0, 2), (0, 3)],
            ),
            (
                "covered cells count",
                row(&format!(
                    r#"{}<table:covered-table-cell table:number-columns-repeated="2"/>{}"#,
                    one("1"),
                    one("1")
                )),
                vec![(0, 0), (0, 3)],
            ),
            (
                "empty repeated rows advance the row",
                format!(
                    r#"<table:table-row table:number-rows-repeated="4"><table:table-cell table:number-columns-repeated="3"/></table:table-row>{}"#,
                    row(&one("1"))
                ),
                vec![(4, 0)],
            ),
            (
                "a repeated row with values is emitted each time",
                format!(
                    r#"<table:table-row table:number-rows-repeated="3"><table:table-cell/>{}</table:table-row>{}"#,
                    one("1"),
                    row(&one("1"))
                ),
                vec![(0, 1), (1, 1), (2, 1), (3, 0)],
            ),
            (
                "header rows and row groups hold rows",
                format!(
                    "<table:table-header-rows>{}</table:table-header-rows><table:table-row-group>{}<table:table-row-group>{}</table:table-row-group></table:table-row-group>{}",
                    row(&one("1")),
                    row(&one("1")),
                    row(&one("1")),
                    row(&one("1"))
                ),
                vec![(0, 0), (1, 0), (2, 0), (3, 0)],
            ),
        ];
        for (label, rows, expected) in cases {
            let got: Vec<(u32, u32)> = read(&rows)
                .unwrap_or_else(|error| panic!("{label}: {error:#}"))
                .into_iter()
                .map(|(position, cell)| {
                    assert_eq!(cell, Data::Float(1.0), "{label}");
                    position
                })
                .collect();
            assert_eq!(got, expected, "{label}");
        }
    }

    #[test]
    fn a_stray_cell_at_the_far_corner_is_read_without_allocating_the_gap() {
        // as LibreOffice writes stray_cell_libreoffice.ods: "stray" at AMJ1048576
        let rows = format!(
            r#"{}<table:table-row table:number-rows-repeated="1048574"><table:table-cell table:number-columns-repeated="16384"/></table:table-row><table:table-row><table:table-cell table:number-columns-repeated="1023"/>{}<table:table-cell table:number-columns-repeated="15360"/></table:table-row>"#,
            row(&string_cell("<text:p>id</text:p>")),
            string_cell("<text:p>stray</text:p>")
        );
        let started = std::time::Instant::now();
        let got = read(&rows).unwrap();
        assert_eq!(
            got,
            vec![((0, 0), text("id")), ((1_048_575, 1023), text("stray"))]
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
    }

    #[test]
    fn values_repeated_past_the_sheet_limits_are_an_error_and_empty_repeats_are_free() {
        let float_cell = |repeats: u32| {
            format!(
                r#"<table:table-cell office:value-type="float" office:value="1" table:number-columns-repeated="{repeats}"/>"#
            )
        };
        let started = std::time::Instant::now();
        // (label, rows XML, part of the error)
        let cases = [
            (
                "a value row repeated 4294967295 times",
                format!(
                    r#"{}<table:table-row table:number-rows-repeated="4294967295">{}</table:table-row>"#,
                    row(&float_cell(1)),
                    float_cell(16_384)
                ),
                "row 2 holds values repeated over 4294967295 rows, past the last row a sheet may have (1048576)",
            ),
            (
                "a value after 4294967295 empty rows",
                format!(
                    r#"<table:table-row table:number-rows-repeated="4294967295"><table:table-cell table:number-columns-repeated="16384"/></table:table-row>{}"#,
                    row(&float_cell(1))
                ),
                "past the last row a sheet may have",
            ),
            (
                "a value repeated past XFD",
                row(&format!(
                    r#"<table:table-cell table:number-columns-repeated="16383"/>{}"#,
                    float_cell(100_000)
                )),
                "cell XFD1: a value repeated over 100000 columns reaches past the last column",
            ),
            (
                "a long string repeated across the row",
                row(&format!(
                    r#"<table:table-cell office:value-type="string" office:string-value="{}" table:number-columns-repeated="16384"/>"#,
                    "s".repeat(65_536)
                )),
                "row 1 holds more than 16 MiB of text",
            ),
        ];
        for (label, rows, expected) in cases {
            let message = format!("{:#}", read(&rows).expect_err(label));
            assert!(message.contains(expected), "{label}: {message}");
        }
        // empty repeats only move the position, however many they claim
        let rows = format!(
            r#"<table:table-row table:number-rows-repeated="1048570"><table:table-cell table:number-columns-repeated="4294967295"/></table:table-row>{}"#,
            row(&float_cell(2))
        );
        assert_eq!(
            read(&rows).unwrap(),
            vec![
                ((1_048_570, 0), Data::Float(1.0)),
                ((1_048_570, 1), Data::Float(1.0))
            ]
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
    }

    #[test]
    fn cell_text_is_bounded_whatever_the_file_claims() {
        let too_long = "longer than the 1 MiB a workbook cell may hold";
        let cases = [
            (
                "one text:s claiming 4294967295 spaces",
                string_cell(r#"<text:p><text:s text:c="4294967295"/></text:p>"#),
                too_long,
            ),
            (
                "many runs of 65536 spaces",
                string_cell(&format!(
                    "<text:p>{}</text:p>",
                    r#"<text:s text:c="65536"/>"#.repeat(40)
                )),
                too_long,
            ),
            (
                "a string-value attribute of 2 MiB",
                format!(
                    r#"<table:table-cell office:value-type="string" office:string-value="{}"/>"#,
                    "a".repeat(2 << 20)
                ),
                "its office:string-value is longer than the 1 MiB",
            ),
            (
                "a paragraph of 2 MiB",
                string_cell(&format!("<text:p>{}</text:p>", "a".repeat(2 << 20))),
                too_long,
            ),
            (
                "a paragraph of 9 MiB of spaces (held by the parser)",
                string_cell(&format!("<text:p>{}</text:p>", " ".repeat(9 << 20))),
                "more than 8 MiB of markup or text without a break",
            ),
            (
                "a tag of 9 MiB with '>' inside its quotes",
                format!(
                    r#"<table:table-cell office:value-type="string" table:style-name="{}"/>"#,
                    ">".repeat(9 << 20)
                ),
                "more than 8 MiB of markup or text without a break",
            ),
        ];
        for (label, cell, expected) in cases {
            let message = format!("{:#}", read(&row(&cell)).expect_err(label));
            assert!(message.contains(expected), "{label}: {message}");
            assert!(message.len() < 400, "{label}: {} bytes", message.len());
        }
        // a cell just under the limit is read
        let text_cell = string_cell(&format!("<text:p>{}</text:p>", "a".repeat(1 << 20)));
        let got = read(&row(&text_cell)).unwrap();
        assert_eq!(got, vec![((0, 0), text(&"a".repeat(1 << 20)))]);
    }

    #[test]
    fn whitespace_between_elements_is_skipped_not_held() {
        // 9 MiB runs of layout whitespace, past what the parser may hold for one event
        let gap = " \n\t".repeat(3 << 20);
        let rows = format!(
            "{}{gap}{}{gap}",
            row(&string_cell("<text:p>a</text:p>")),
            row(&format!("{gap}{}", string_cell("<text:p> b </text:p>")))
        );
        let got = read(&rows).unwrap();
        assert_eq!(got, vec![((0, 0), text("a")), ((1, 0), text(" b "))]);
    }

    #[test]
    fn only_the_chosen_sheet_is_read_and_names_keep_document_order() {
        let first = row(&string_cell("<text:p>first</text:p>"));
        let second = row(&string_cell("<text:p>second</text:p>"));
        let xml = content_xml(&[("Zeta", &first), ("Alpha", &second)]);
        assert_eq!(read_sheet_names(xml.as_bytes()).unwrap(), ["Zeta", "Alpha"]);
        let mut cells = Vec::new();
        let found = read_sheet_cells(
            xml.as_bytes(),
            "Alpha",
            &mut |position: (u32, u32), cell: Data| {
                cells.push((position, cell));
                ControlFlow::Continue(())
            },
        )
        .unwrap();
        assert!(found);
        assert_eq!(cells, vec![((0, 0), text("second"))]);
        let missing = read_sheet_cells(xml.as_bytes(), "Gamma", &mut |_: (u32, u32), _: Data| {
            panic!("no cell is read from a missing sheet")
        });
        assert!(!missing.unwrap());
    }

    #[test]
    fn reading_stops_when_the_visitor_breaks() {
        let rows = format!(
            r#"<table:table-row table:number-rows-repeated="1000">{}</table:table-row>"#,
            string_cell("<text:p>x</text:p>")
        );
        let xml = content_xml(&[("S", &rows)]);
        let mut pushed = 0;
        read_sheet_cells(xml.as_bytes(), "S", &mut |_: (u32, u32), _: Data| {
            pushed += 1;
            ControlFlow::Break(())
        })
        .unwrap();
        assert_eq!(pushed, 1);
    }

    #[test]
    fn broken_xml_is_one_line_error_not_a_panic() {
        let whole = content_xml(&[("S", &row(&string_cell("<text:p>x</text:p>")))]);
        let cases = [
            (
                "truncated between tags",
                whole[..whole
                    .find("</table:table>")
                    .expect("the test XML has a table")]
                    .to_string(),
                "truncated",
            ),
            (
                "truncated inside a tag",
                whole[..whole.len() / 2].to_string(),
                "not well-formed near byte",
            ),
            (
                "bad number",
                content_xml(&[(
                    "S",
                    &row(
                        r#"<table:table-cell/><table:table-cell office:value-type="float" office:value="abc"/>"#,
                    ),
                )]),
                r#"cell B1: office:value "abc" is not a number"#,
            ),
            (
                "mismatched tags",
                whole.replace("</text:p>", "</text:span>"),
                "not well-formed",
            ),
            (
                "not a spreadsheet",
                "<office:document-content/>".to_string(),
                "no spreadsheet",
            ),
        ];
        for (label, xml, expected) in cases {
            let error = read_sheet_names(xml.as_bytes())
                .and_then(|_| {
                    read_sheet_cells(xml.as_bytes(), "S", &mut |_: (u32, u32), _: Data| {
                        ControlFlow::Continue(())
                    })
                })
                .expect_err(label);
            let message = format!("{error:#}");
            assert!(message.contains(expected), "{label}: {message}");
            assert!(!message.contains('\n'), "{label}: {message}");
        }
    }

    #[test]
    fn cell_names_are_a1() {
        let cases = [
            ((0, 0), "A1"),
            ((4, 2), "C5"),
            ((0, 25), "Z1"),
            ((0, 26), "AA1"),
            ((1_048_575, 1023), "AMJ1048576"),
            ((0, 16_383), "XFD1"),
        ];
        for ((row_index, column_index), expected) in cases {
            assert_eq!(cell_name(row_index, column_index), expected);
        }
    }

    /// A scratch directory removed on drop.
    struct ScratchDir(PathBuf);

    impl ScratchDir {
        fn new(label: &str) -> Self {
            let path = std::env::temp_dir().join(format!(
                "importer-ods-{label}-{}-{}",
                std::process::id(),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |elapsed| elapsed.as_nanos())
            ));
            std::fs::create_dir_all(&path).expect("temp dir is writable");
            Self(path)
        }
    }

    impl Drop for ScratchDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Writes a zip holding `parts` (name, bytes) and returns its path.
    fn write_zip(dir: &ScratchDir, file_name: &str, parts: &[(&str, &[u8])]) -> PathBuf {
        let path = dir.0.join(file_name);
        let file = File::create(&path).expect("temp file is writable");
        let mut zip = zip::ZipWriter::new(file);
        for (name, bytes) in parts {
            zip.start_file(*name, zip::write::SimpleFileOptions::default())
                .expect("zip entry starts");
            zip.write_all(bytes).expect("zip entry is written");
        }
        zip.finish().expect("zip is finished");
        path
    }

    #[test]
    fn a_package_is_read_from_its_zip() {
        let dir = ScratchDir::new("package");
        let xml = content_xml(&[
            ("One", &row(&string_cell("<text:p>a</text:p>"))),
            ("Two", &row(&string_cell("<text:p>b</text:p>"))),
        ]);
        let path = write_zip(
            &dir,
            "book.ods",
            &[
                (
                    "mimetype",
                    b"application/vnd.oasis.opendocument.spreadsheet",
                ),
                (CONTENT_XML, xml.as_bytes()),
            ],
        );
        let mut workbook = OdsWorkbook::open(&path).unwrap();
        assert_eq!(workbook.sheet_names().unwrap(), ["One", "Two"]);
        let mut cells = Vec::new();
        workbook
            .read_sheet("Two", &mut |position: (u32, u32), cell: Data| {
                cells.push((position, cell));
                ControlFlow::Continue(())
            })
            .unwrap();
        assert_eq!(cells, vec![((0, 0), text("b"))]);
        let missing = workbook
            .read_sheet("Three", &mut |_: (u32, u32), _: Data| {
                ControlFlow::Continue(())
            })
            .unwrap_err();
        assert_eq!(
            format!("{missing:#}"),
            format!(
                r#"cannot read sheet "Three" of {}: content.xml has no such sheet"#,
                path.display()
            )
        );
    }

    #[test]
    fn a_bad_package_is_a_one_line_error_naming_the_file() {
        let dir = ScratchDir::new("bad");
        let good = write_zip(
            &dir,
            "good.ods",
            &[(CONTENT_XML, content_xml(&[("S", "")]).as_bytes())],
        );
        let bytes = std::fs::read(&good).expect("zip was written");
        let truncated = dir.0.join("truncated.ods");
        std::fs::write(&truncated, &bytes[..bytes.len() / 2]).expect("temp file is writable");
        let junk = dir.0.join("junk.ods");
        std::fs::write(&junk, b"not a zip at all").expect("temp file is writable");
        let no_content = write_zip(&dir, "no_content.ods", &[("mimetype", b"x")]);
        let encrypted = write_zip(
            &dir,
            "encrypted.ods",
            &[
                (CONTENT_XML, b"\x01\x02 encrypted bytes"),
                (
                    MANIFEST_XML,
                    br#"<manifest:manifest xmlns:manifest="urn:oasis:names:tc:opendocument:xmlns:manifest:1.0"><manifest:file-entry manifest:full-path="content.xml"><manifest:encryption-data manifest:checksum="x"/></manifest:file-entry></manifest:manifest>"#,
                ),
            ],
        );
        let cases = [
            (
                &truncated,
                "not a readable workbook (corrupt or truncated?): ",
            ),
            (&junk, "not a readable workbook (corrupt or truncated?): "),
            (
                &no_content,
                "not a readable workbook (content.xml is missing)",
            ),
            (&encrypted, "password protected"),
        ];
        for (path, expected) in cases {
            let message = match OdsWorkbook::open(path) {
                Ok(_) => panic!("{} opened", path.display()),
                Err(error) => format!("{error:#}"),
            };
            let prefix = format!("cannot open {}: ", path.display());
            assert!(message.starts_with(&prefix), "{message}");
            assert!(message.contains(expected), "{message}");
            assert!(!message.contains('\n'), "{message}");
        }
    }

    #[test]
    fn a_corrupt_content_xml_is_a_one_line_error_naming_the_file() {
        let dir = ScratchDir::new("corrupt");
        let rows = row(&string_cell("<text:p>some text</text:p>")).repeat(200);
        let good = write_zip(
            &dir,
            "good.ods",
            &[(CONTENT_XML, content_xml(&[("S", &rows)]).as_bytes())],
        );
        let mut bytes = std::fs::read(&good).expect("zip was written");
        // the entry's data follows its name in the local header: 0xFF bytes there start a
        // deflate block of the reserved type, which no inflater accepts
        let name_at = bytes
            .windows(CONTENT_XML.len())
            .position(|window| window == CONTENT_XML.as_bytes())
            .expect("the local header names content.xml");
        let data_at = name_at + CONTENT_XML.len();
        bytes[data_at..data_at + 16].fill(0xFF);
        let corrupt = dir.0.join("corrupt.ods");
        std::fs::write(&corrupt, &bytes).expect("temp file is writable");
        let mut workbook = OdsWorkbook::open(&corrupt).expect("the central directory is intact");
        let message = format!("{:#}", workbook.sheet_names().unwrap_err());
        let prefix = format!(
            "cannot read the sheets of {}: content.xml",
            corrupt.display()
        );
        assert!(message.starts_with(&prefix), "{message}");
        assert!(!message.contains('\n'), "{message}");
    }
}
