//! The worksheet reader: scans `<sheetData>` row by row and cell by cell, decodes each cell
//! into the calamine [`Data`] calamine's own cell reader gives for it, and hands the
//! non-empty ones, in sheet order, to the caller.
//!
//! Two halves, so that they can run on two threads: the scanner (`scan_sheet_cells`) decodes
//! cells, shared-string cells as their index only, and hands them on in batches of whole
//! rows; the [`Resolver`] replaces the indexes by their text, a row at a time, waiting only
//! if the table has not reached the row's highest index yet, and hands the cells on. It does
//! not assemble rows or skip the rows above the header: the cells go next into the parent
//! module's `RowAssembler`.

use std::borrow::Cow;
use std::io::Read;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, anyhow, bail};
use calamine::{CellErrorType, Data};

use super::scan::{
    Attributes, ScanError, Tag, TagKind, XmlStream, attribute, decode_string_item, decode_text,
    find_end_tag, resumable_end_tag, unescape_excel,
};
use super::strings::{Entry, SharedStrings, Table};
use super::styles::CellFormat;
use super::{MAX_CELL_TEXT_BYTES, MAX_ELEMENT_XML_BYTES, MAX_ROW_TEXT_BYTES};
use crate::message::{quoted_value, shown_value};

/// Cells gathered before they are resolved and handed on, even inside one `<row>`.
const MAX_PENDING_CELLS: usize = 4096;

/// What the sheet reader hands on.
#[derive(Debug, PartialEq)]
pub(crate) enum SheetEvent {
    /// A non-empty cell and its 0-based (row, column).
    Cell((u32, u32), Data),
    /// A `<row>` ended: the cells before belong to complete rows.
    RowEnd,
}

/// What the sheet needs from the workbook.
pub(super) struct SheetContext<'a> {
    pub(super) formats: &'a [CellFormat],
    pub(super) is_1904: bool,
    pub(super) strings: &'a SharedStrings,
}

/// What reading the sheet found besides its cells.
#[derive(Debug, Default)]
pub(super) struct SheetOutcome {
    /// 1-based last row of the sheet's `<dimension>` claim (a hint, never trusted).
    pub(super) declared_last_row: Option<u32>,
    /// Formula cells that hold no cached value (they load as NULL).
    pub(super) uncached_formula_count: u64,
    /// The first of them, 0-based (row, column).
    pub(super) first_uncached_formula: Option<(u32, u32)>,
    /// The sheet was read to its end (the caller did not stop it).
    pub(super) read_to_end: bool,
}

/// A cell waiting for its row to end.
pub(super) enum Pending {
    Ready(Data),
    Shared(u32),
}

/// A cell's `t` attribute.
#[derive(Debug, Clone, PartialEq, Eq)]
enum CellKind {
    SharedString,
    InlineString,
    FormulaString,
    Boolean,
    Error,
    Number,
    IsoDate,
    /// Refused when the cell has a value, as calamine does.
    Unknown(String),
}

impl CellKind {
    #[inline]
    fn parse(kind: &[u8]) -> CellKind {
        match kind {
            b"s" => CellKind::SharedString,
            b"inlineStr" | b"is" => CellKind::InlineString,
            b"str" => CellKind::FormulaString,
            b"b" => CellKind::Boolean,
            b"e" => CellKind::Error,
            b"n" => CellKind::Number,
            b"d" => CellKind::IsoDate,
            other => CellKind::Unknown(String::from_utf8_lossy(other).into_owned()),
        }
    }
}

/// A cell's `s` attribute as a style index; one that is not a number is style 0, as in
/// calamine.
fn style_index(style: &[u8]) -> usize {
    if let Some(index) = short_decimal(style) {
        return index as usize;
    }
    std::str::from_utf8(style)
        .ok()
        .and_then(|style| style.parse::<usize>().ok())
        .unwrap_or(0)
}

/// `bytes` as a number when they are 1 to 9 ASCII digits and nothing else (what writers
/// emit for indexes and row numbers), read in plain arithmetic; `None` for anything else,
/// which the callers parse the general way.
#[inline]
fn short_decimal(bytes: &[u8]) -> Option<u32> {
    if !(1..=9).contains(&bytes.len()) || !bytes.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(
        bytes
            .iter()
            .fold(0, |number, digit| number * 10 + u32::from(digit - b'0')),
    )
}

/// One cell's children, as found in its XML.
enum CellValue<'a> {
    None,
    V(&'a [u8]),
    Is(&'a [u8]),
}

/// What the scanner hands on to the [`Resolver`]: a non-empty cell, a shared string still
/// as its index, or the end of a `<row>`.
pub(super) enum Scanned {
    /// A `<row>` starts: its text budget starts again.
    RowStart,
    Cell((u32, u32), Pending),
    RowEnd,
}

/// Items the scanner gathers before it hands them on: at a row's end past
/// [`BATCH_ROW_ITEMS`], and within a row at [`MAX_PENDING_CELLS`] or once the batch holds
/// [`BATCH_TEXT_BYTES`] of text.
const BATCH_ROW_ITEMS: usize = 2048;
const BATCH_TEXT_BYTES: usize = 1 << 20;

struct RowState {
    row_index: u32,
    column_index: u32,
    batch: Vec<Scanned>,
    /// Text bytes of the cells in `batch`.
    batch_text_bytes: usize,
    /// Text bytes of the current `<row>`'s own cells (inline, formula strings), which the
    /// scanner holds; shared strings are counted when resolved.
    row_text_bytes: usize,
}

/// Reads the cells of one worksheet part; `visit` gets each non-empty cell with its 0-based
/// (row, column) and may stop the read. Scans and resolves on the caller's thread (the
/// workbook reader runs [`scan_sheet_cells`] on a thread of its own instead).
#[cfg(test)]
pub(super) fn read_sheet_cells(
    reader: impl Read,
    context: &SheetContext<'_>,
    visit: &mut dyn FnMut(SheetEvent) -> ControlFlow<()>,
) -> anyhow::Result<SheetOutcome> {
    let mut resolver = Resolver::new(context.strings);
    let (outcome, scanned) = scan_sheet_cells(reader, context, None, &mut |batch| {
        resolver.resolve(batch, visit)
    });
    scanned.map(|()| outcome)
}

/// Scans the cells of one worksheet part and hands them on in batches of whole rows (see
/// [`BATCH_ROW_ITEMS`]) to `send`, which takes the batch's items (leaving the vector empty,
/// or swapping in another) and may stop the read. Only the shared strings are left to
/// resolve, so the scan needs nothing of the shared-string table.
/// Once `stop` is set the scan ends at its next read, without error. On an error the rows
/// complete before it are sent first, as if read one by one, and the error is returned
/// only if `send` took them all; the outcome (what the scan found so far) in any case.
pub(super) fn scan_sheet_cells(
    reader: impl Read,
    context: &SheetContext<'_>,
    stop: Option<&AtomicBool>,
    send: &mut dyn FnMut(&mut Vec<Scanned>) -> anyhow::Result<ControlFlow<()>>,
) -> (SheetOutcome, anyhow::Result<()>) {
    let mut outcome = SheetOutcome::default();
    let mut state = RowState {
        row_index: 0,
        column_index: 0,
        batch: Vec::new(),
        batch_text_bytes: 0,
        row_text_bytes: 0,
    };
    let result = match scan_into(reader, context, stop, &mut outcome, &mut state, send) {
        Err(_) if stop.is_some_and(|stop| stop.load(Ordering::Relaxed)) => Ok(()),
        Err(error) => {
            let complete = state
                .batch
                .iter()
                .rposition(|item| matches!(item, Scanned::RowEnd))
                .map_or(0, |last| last + 1);
            state.batch.truncate(complete);
            match send_batch(&mut state, send) {
                Ok(ControlFlow::Continue(())) => Err(error),
                Ok(ControlFlow::Break(())) => Ok(()),
                // an error of an earlier cell
                Err(earlier) => Err(earlier),
            }
        }
        Ok(()) => Ok(()),
    };
    (outcome, result)
}

fn scan_into(
    reader: impl Read,
    context: &SheetContext<'_>,
    stop: Option<&AtomicBool>,
    outcome: &mut SheetOutcome,
    state: &mut RowState,
    send: &mut dyn FnMut(&mut Vec<Scanned>) -> anyhow::Result<ControlFlow<()>>,
) -> anyhow::Result<()> {
    let mut stream = XmlStream::new(reader, MAX_ELEMENT_XML_BYTES, stop);
    let malformed = |error: ScanError| anyhow!("{error}");
    // the prologue: everything before <sheetData>
    loop {
        let Some(tag) = stream.next_tag().map_err(malformed)? else {
            bail!("the worksheet has no <sheetData>");
        };
        let data = stream.data();
        match (tag.kind, tag.local_name(data)) {
            (TagKind::Start | TagKind::Empty, b"dimension") => {
                outcome.declared_last_row = attribute(tag.attribute_text(data), b"ref")
                    .and_then(|reference| reference.split(|byte| *byte == b':').next_back())
                    .and_then(|corner| parse_reference(corner).ok())
                    .map(|(row_index, _)| row_index.saturating_add(1));
            }
            (TagKind::Start, b"sheetData") => {
                stream.consume(tag.length);
                break;
            }
            (TagKind::Empty, b"sheetData") => {
                outcome.read_to_end = true;
                return Ok(());
            }
            _ => {}
        }
        stream.consume(tag.length);
    }
    let mut text = Vec::new();
    let mut scratch = Vec::new();
    loop {
        // complete rows go on before the scanner waits for more of the part, so that a
        // slow or padded part does not hold back rows it has already given
        if matches!(state.batch.last(), Some(Scanned::RowEnd))
            && !stream.data().starts_with(b"<")
            && memchr::memchr(b'<', stream.data()).is_none()
            && send_batch(state, send)?.is_break()
        {
            return Ok(());
        }
        // a cell's start tag is read by a scanner of its own (the one tag of every cell);
        // anything it does not know goes through the general tag scanner
        let fast = stream
            .data()
            .starts_with(b"<c ")
            .then(|| cell_start_tag(stream.data()))
            .flatten();
        let cell_tag = match fast {
            Some(cell_tag) => cell_tag,
            None => {
                let Some(tag) = stream.next_tag().map_err(malformed)? else {
                    bail!("the worksheet ends before </sheetData>");
                };
                let data = stream.data();
                match (tag.kind, tag.local_name(data)) {
                    (TagKind::Start | TagKind::Empty, b"row") => {
                        if let Some(reference) = attribute(tag.attribute_text(data), b"r") {
                            let (row_index, _) = parse_reference(reference).with_context(|| {
                                format!("row {} has a bad r attribute", state.row_index + 1)
                            })?;
                            state.row_index = row_index;
                        }
                        state.row_text_bytes = 0;
                        state.batch.push(Scanned::RowStart);
                        if tag.kind == TagKind::Empty {
                            state.row_index = state.row_index.saturating_add(1);
                            state.column_index = 0;
                        }
                        stream.consume(tag.length);
                        continue;
                    }
                    (TagKind::End, b"row") => {
                        stream.consume(tag.length);
                        state.batch.push(Scanned::RowEnd);
                        if state.batch.len() >= BATCH_ROW_ITEMS
                            && send_batch(state, send)?.is_break()
                        {
                            return Ok(());
                        }
                        state.row_index = state.row_index.saturating_add(1);
                        state.column_index = 0;
                        continue;
                    }
                    (TagKind::Start | TagKind::Empty, b"c") => CellTag::from_tag(&tag, data),
                    (TagKind::End, b"sheetData") => {
                        if send_batch(state, send)?.is_continue() {
                            outcome.read_to_end = true;
                        }
                        return Ok(());
                    }
                    _ => {
                        stream.consume(tag.length);
                        continue;
                    }
                }
            }
        };
        let data = stream.data();
        let CellTag {
            reference,
            style,
            kind,
            length: tag_length,
            empty,
            qname,
        } = cell_tag;
        let position = match reference {
            Some(reference) => {
                let (row_index, column_index) = match parse_short_reference(reference) {
                    Some((row_index, Some(column_index))) => Some((row_index, column_index)),
                    _ => parse_reference(reference)
                        .ok()
                        .and_then(|(row_index, column_index)| Some((row_index, column_index?))),
                }
                .with_context(|| {
                    format!(
                        "cell {} has a bad r attribute",
                        cell_name((state.row_index, state.column_index))
                    )
                })?;
                state.column_index = column_index;
                (row_index, column_index)
            }
            None => (state.row_index, state.column_index),
        };
        let at_cell = || format!("cell {}", cell_name(position));
        // parsed here, so nothing borrowed from the window outlives a refill
        let style = style.map(style_index);
        let kind = kind.map(CellKind::parse);
        let cell = if empty {
            stream.consume(tag_length);
            (Pending::Ready(Data::Empty), false)
        } else if let Some((raw, length)) = plain_value(&data[tag_length..])
            && qname == b"c"
        {
            // the common shape, `<c ...><v>raw</v></c>`, decoded without searching
            // for the end tags
            let pending = decode_value(raw, kind.as_ref(), style, context, &mut text)
                .with_context(at_cell)?;
            stream.consume(tag_length + length);
            (pending, false)
        } else {
            let close: Cow<'_, [u8]> = if qname == b"c" {
                Cow::Borrowed(b"c")
            } else {
                Cow::Owned(qname.to_vec())
            };
            let start = tag_length;
            let end = stream
                .read_until(resumable_end_tag(start, &close))
                .map_err(|error| match error {
                    ScanError::TooLong => anyhow!(
                        "the cell holds more than {} MiB of XML (the per-cell limit is {} MiB of text)",
                        MAX_ELEMENT_XML_BYTES >> 20,
                        MAX_CELL_TEXT_BYTES >> 20
                    ),
                    error => anyhow!("{error}"),
                })
                .with_context(at_cell)?
                .with_context(|| format!("{}: the worksheet ends inside it", at_cell()))?;
            let body = &stream.data()[start..end.0];
            let cell = decode_cell(body, kind.as_ref(), style, context, &mut text, &mut scratch)
                .with_context(at_cell)?;
            stream.consume(end.1);
            cell
        };
        let (pending, has_formula) = cell;
        state.column_index = state.column_index.saturating_add(1);
        match &pending {
            Pending::Ready(Data::Empty) => {
                if has_formula {
                    outcome.uncached_formula_count += 1;
                    outcome.first_uncached_formula.get_or_insert(position);
                }
                continue;
            }
            Pending::Ready(Data::String(text)) => {
                if text.is_empty() {
                    continue;
                }
                charge_row(&mut state.row_text_bytes, text.len(), position)?;
                state.batch_text_bytes += text.len();
            }
            // not in the row's budget (as before), but in the batch's memory
            Pending::Ready(Data::DateTimeIso(text)) => state.batch_text_bytes += text.len(),
            Pending::Ready(_) | Pending::Shared(_) => {}
        }
        state.batch.push(Scanned::Cell(position, pending));
        if (state.batch.len() >= MAX_PENDING_CELLS || state.batch_text_bytes >= BATCH_TEXT_BYTES)
            && send_batch(state, send)?.is_break()
        {
            return Ok(());
        }
    }
}

/// The start tag of a cell, as the sheet reader needs it.
struct CellTag<'a> {
    /// The raw `r`, `s` and `t` attributes (the first of each).
    reference: Option<&'a [u8]>,
    style: Option<&'a [u8]>,
    kind: Option<&'a [u8]>,
    /// Bytes of the tag.
    length: usize,
    /// `<c .../>`.
    empty: bool,
    /// `c`, or a prefixed `x:c`.
    qname: &'a [u8],
}

impl<'a> CellTag<'a> {
    /// A cell's start tag as the general scanner found it at the start of `data`.
    fn from_tag(tag: &Tag, data: &'a [u8]) -> Self {
        let mut cell_tag = CellTag {
            reference: None,
            style: None,
            kind: None,
            length: tag.length,
            empty: tag.kind == TagKind::Empty,
            qname: tag.qname(data),
        };
        for (key, value) in Attributes(tag.attribute_text(data)) {
            cell_tag.set(key, value);
        }
        cell_tag
    }

    fn set(&mut self, key: &[u8], value: &'a [u8]) {
        let slot = match key {
            b"r" => &mut self.reference,
            b"s" => &mut self.style,
            b"t" => &mut self.kind,
            _ => return,
        };
        slot.get_or_insert(value);
    }
}

/// The cell start tag at the start of `data` (which starts with `<c `), for the plain shape
/// writers emit (`key="value"` attributes, either quote); `None` for anything else, or a tag
/// not wholly in `data`, which the general scanner then reads.
#[inline]
fn cell_start_tag(data: &[u8]) -> Option<CellTag<'_>> {
    let mut cell_tag = CellTag {
        reference: None,
        style: None,
        kind: None,
        length: 0,
        empty: false,
        qname: b"c",
    };
    // the first '>'; one inside a quoted value leaves a quote unclosed below: not plain
    let end = 3 + memchr::memchr(b'>', &data[3..])?;
    cell_tag.length = end + 1;
    let mut rest = &data[3..end];
    loop {
        while let [first, tail @ ..] = rest
            && is_space(*first)
        {
            rest = tail;
        }
        match rest {
            [] => return Some(cell_tag),
            [b'/'] => {
                cell_tag.empty = true;
                return Some(cell_tag);
            }
            _ => {}
        }
        let equals = rest.iter().position(|byte| *byte == b'=')?;
        let key = &rest[..equals];
        if key
            .iter()
            .any(|byte| is_space(*byte) || matches!(byte, b'/' | b'"' | b'\'' | b'<'))
        {
            return None;
        }
        let quote = *rest.get(equals + 1)?;
        if quote != b'"' && quote != b'\'' {
            return None;
        }
        let value = &rest[equals + 2..];
        let close = value.iter().position(|byte| *byte == quote)?;
        cell_tag.set(key, &value[..close]);
        rest = &value[close + 1..];
    }
}

fn is_space(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\r' | b'\n')
}

/// Hands the gathered batch on.
fn send_batch(
    state: &mut RowState,
    send: &mut dyn FnMut(&mut Vec<Scanned>) -> anyhow::Result<ControlFlow<()>>,
) -> anyhow::Result<ControlFlow<()>> {
    if state.batch.is_empty() {
        return Ok(ControlFlow::Continue(()));
    }
    state.batch_text_bytes = 0;
    let flow = send(&mut state.batch);
    state.batch.clear();
    flow
}

/// Counts `byte_count` bytes of text against a row's budget.
fn charge_row(
    row_text_bytes: &mut usize,
    byte_count: usize,
    position: (u32, u32),
) -> anyhow::Result<()> {
    *row_text_bytes += byte_count;
    if *row_text_bytes > MAX_ROW_TEXT_BYTES {
        bail!(
            "row {} holds more than {} MiB of text (at cell {})",
            position.0 + 1,
            MAX_ROW_TEXT_BYTES >> 20,
            cell_name(position)
        );
    }
    Ok(())
}

/// Resolves the shared strings of scanned batches, row by row, and hands the cells on:
/// a row waits only for the entries it references.
pub(super) struct Resolver<'a> {
    strings: &'a SharedStrings,
    /// The table, once complete, taken out of its mutex.
    owned_table: Option<Table>,
    /// Text bytes of the current row's cells.
    row_text_bytes: usize,
}

impl<'a> Resolver<'a> {
    pub(super) fn new(strings: &'a SharedStrings) -> Self {
        Self {
            strings,
            owned_table: None,
            row_text_bytes: 0,
        }
    }

    /// Resolves `batch` and hands it to `visit` until the batch ends or `visit` breaks;
    /// leaves `batch` empty, its capacity kept for reuse.
    pub(super) fn resolve(
        &mut self,
        batch: &mut Vec<Scanned>,
        visit: &mut dyn FnMut(SheetEvent) -> ControlFlow<()>,
    ) -> anyhow::Result<ControlFlow<()>> {
        let flow = self.resolve_items(batch, visit);
        batch.clear();
        flow
    }

    fn resolve_items(
        &mut self,
        batch: &mut [Scanned],
        visit: &mut dyn FnMut(SheetEvent) -> ControlFlow<()>,
    ) -> anyhow::Result<ControlFlow<()>> {
        let mut start = 0;
        while start < batch.len() {
            let end = batch[start..]
                .iter()
                .position(|item| matches!(item, Scanned::RowEnd))
                .map_or(batch.len(), |offset| start + offset + 1);
            let row = &mut batch[start..end];
            self.resolve_row(row)?;
            // the table is not held while the cells go on, so the parser may publish
            for item in row {
                let event = match std::mem::replace(item, Scanned::RowEnd) {
                    Scanned::RowStart => continue,
                    Scanned::RowEnd => SheetEvent::RowEnd,
                    Scanned::Cell(_, Pending::Ready(Data::String(text))) if text.is_empty() => {
                        continue;
                    }
                    Scanned::Cell(position, Pending::Ready(data)) => {
                        SheetEvent::Cell(position, data)
                    }
                    Scanned::Cell(_, Pending::Shared(_)) => {
                        unreachable!("resolve_row resolved every shared cell")
                    }
                };
                if visit(event).is_break() {
                    return Ok(ControlFlow::Break(()));
                }
            }
            start = end;
        }
        Ok(ControlFlow::Continue(()))
    }

    /// Replaces the shared-string cells of `row` (one row, or part of one) by their text,
    /// and counts the row's text against its budget.
    fn resolve_row(&mut self, row: &mut [Scanned]) -> anyhow::Result<()> {
        let highest = row
            .iter()
            .filter_map(|item| match item {
                Scanned::Cell(_, Pending::Shared(index)) => Some(*index),
                _ => None,
            })
            .max();
        let table = highest.map(|highest| self.strings.wait_for(highest, &mut self.owned_table));
        for item in row {
            let Scanned::Cell(position, cell) = item else {
                if matches!(item, Scanned::RowStart) {
                    self.row_text_bytes = 0;
                }
                continue;
            };
            match cell {
                Pending::Shared(index) => {
                    let table = table
                        .as_ref()
                        .expect("a row with shared cells waited above");
                    let text = match table.get(*index) {
                        Some(Entry::Text(text)) => text,
                        Some(Entry::Oversized) => bail!(
                            "cell {}: its shared string is longer than the per-cell limit of {} MiB",
                            cell_name(*position),
                            MAX_CELL_TEXT_BYTES >> 20
                        ),
                        None => bail!("cell {}: {}", cell_name(*position), table.missing(*index)),
                    };
                    charge_row(&mut self.row_text_bytes, text.len(), *position)?;
                    *cell = Pending::Ready(Data::String(text.to_string()));
                }
                Pending::Ready(Data::String(text)) => {
                    charge_row(&mut self.row_text_bytes, text.len(), *position)?;
                }
                Pending::Ready(_) => {}
            }
        }
        Ok(())
    }
}

/// Decodes one cell from the XML between `<c ...>` and `</c>`; also says whether it has a
/// formula.
fn decode_cell(
    body: &[u8],
    kind: Option<&CellKind>,
    style: Option<usize>,
    context: &SheetContext<'_>,
    text: &mut Vec<u8>,
    scratch: &mut Vec<u8>,
) -> anyhow::Result<(Pending, bool)> {
    let mut value = CellValue::None;
    let mut has_formula = false;
    let mut index = 0;
    // as in calamine, the last child element decides the value
    while let Some(offset) = memchr::memchr(b'<', &body[index..]) {
        index += offset;
        let tag = super::scan::parse_tag(&body[index..])
            .map_err(|error| anyhow!("{error}"))?
            .context("malformed XML: an unclosed tag")?;
        let here = &body[index..];
        let local = tag.local_name(here);
        let inner = |index: usize| -> anyhow::Result<(&[u8], usize)> {
            let start = index + tag.length;
            let end =
                find_end_tag(&body[start..], tag.qname(&body[index..])).with_context(|| {
                    format!(
                        "malformed XML: <{}> is not closed",
                        shown_value(&String::from_utf8_lossy(local))
                    )
                })?;
            Ok((&body[start..start + end.start], start + end.after))
        };
        match (tag.kind, local) {
            (TagKind::Start, b"v") => {
                let (content, after) = inner(index)?;
                value = CellValue::V(content);
                index = after;
                continue;
            }
            (TagKind::Empty, b"v") => value = CellValue::V(b""),
            (TagKind::Start, b"is") => {
                let (content, after) = inner(index)?;
                value = CellValue::Is(content);
                index = after;
                continue;
            }
            (TagKind::Empty, b"is") => value = CellValue::Is(b""),
            (TagKind::Start, b"f") => {
                has_formula = true;
                value = CellValue::None;
                let (_, after) = inner(index)?;
                index = after;
                continue;
            }
            (TagKind::Empty, b"f") => {
                has_formula = true;
                value = CellValue::None;
            }
            (TagKind::Start | TagKind::Empty, name) => {
                bail!(
                    "unexpected <{}> in a cell (expected v, f or is)",
                    shown_value(&String::from_utf8_lossy(name))
                )
            }
            _ => {}
        }
        index += tag.length;
    }
    let pending = match value {
        CellValue::None => Pending::Ready(Data::Empty),
        CellValue::Is(content) => {
            text.clear();
            decode_string_item(content, text, scratch).map_err(|error| anyhow!("{error}"))?;
            Pending::Ready(Data::String(owned_text(text)?))
        }
        CellValue::V(raw) => decode_value(raw, kind, style, context, text)?,
    };
    Ok((pending, has_formula))
}

/// `bytes` as an owned string, within the per-cell limit.
fn owned_text(bytes: &[u8]) -> anyhow::Result<String> {
    if bytes.len() > MAX_CELL_TEXT_BYTES {
        bail!(
            "its text is longer than the per-cell limit of {} MiB",
            MAX_CELL_TEXT_BYTES >> 20
        );
    }
    let text = std::str::from_utf8(bytes).context("its text is not UTF-8")?;
    Ok(text.to_string())
}

/// The raw value of a cell body that is exactly `<v>raw</v></c>`, with no markup, entity or
/// carriage return in `raw`, and the bytes of the body with its end tag; `None` for any
/// other shape, or one not wholly in `body` yet, which the general decoder reads.
#[inline]
fn plain_value(body: &[u8]) -> Option<(&[u8], usize)> {
    let rest = body.strip_prefix(b"<v>")?;
    let length = memchr::memchr3(b'<', b'&', b'\r', rest)?;
    rest[length..]
        .starts_with(b"</v></c>")
        .then(|| (&rest[..length], 3 + length + 8))
}

/// Decodes the `<v>` of a cell by its `t` and `s` attributes, as calamine's `read_v` does.
fn decode_value(
    raw: &[u8],
    kind: Option<&CellKind>,
    style: Option<usize>,
    context: &SheetContext<'_>,
    text: &mut Vec<u8>,
) -> anyhow::Result<Pending> {
    // the shared-string index as writers emit it, read without decoding
    if kind == Some(&CellKind::SharedString)
        && let Some(index) = short_decimal(raw)
    {
        return Ok(Pending::Shared(index));
    }
    text.clear();
    decode_text(raw, text).map_err(|error| anyhow!("{error}"))?;
    let value = std::str::from_utf8(text).context("its value is not UTF-8")?;
    Ok(match kind {
        Some(CellKind::InlineString) => Pending::Ready(Data::Empty),
        Some(CellKind::SharedString) => {
            let trimmed = value.trim_ascii();
            if trimmed.is_empty() {
                return Ok(Pending::Ready(Data::Empty));
            }
            // calamine reads an unparsable index as 0; a wrong string is worse than an error
            let index = trimmed.parse::<u32>().with_context(|| {
                format!(
                    "shared string index {} is not a number",
                    quoted_value(trimmed)
                )
            })?;
            Pending::Shared(index)
        }
        Some(CellKind::Boolean) => {
            let trimmed = value.trim();
            if trimmed.is_empty() {
                Pending::Ready(Data::Empty)
            } else if trimmed == "0" || trimmed.eq_ignore_ascii_case("false") {
                Pending::Ready(Data::Bool(false))
            } else if trimmed == "1" || trimmed.eq_ignore_ascii_case("true") {
                Pending::Ready(Data::Bool(true))
            } else {
                bail!("boolean cell holds {}", quoted_value(value))
            }
        }
        Some(CellKind::IsoDate) => Pending::Ready(Data::DateTimeIso(owned_text(value.as_bytes())?)),
        Some(CellKind::Error) => Pending::Ready(Data::Error(parse_error(value)?)),
        Some(CellKind::FormulaString) => {
            let mut unescaped = Vec::with_capacity(value.len());
            unescape_excel(value.as_bytes(), &mut unescaped);
            Pending::Ready(Data::String(owned_text(&unescaped)?))
        }
        Some(CellKind::Number) | None => {
            if value.is_empty() {
                return Ok(Pending::Ready(Data::Empty));
            }
            match value.parse::<f64>() {
                Ok(number) => Pending::Ready(number_cell(number, style, context)),
                Err(_) if kind.is_none() => {
                    Pending::Ready(Data::String(owned_text(value.as_bytes())?))
                }
                Err(_) => bail!("numeric cell holds {}", quoted_value(value)),
            }
        }
        Some(CellKind::Unknown(other)) => bail!("unknown cell type t={}", quoted_value(other)),
    })
}

/// A number, or a date when the cell's style formats it as one.
fn number_cell(number: f64, style: Option<usize>, context: &SheetContext<'_>) -> Data {
    let format = match style {
        Some(style_index) => context.formats.get(style_index).copied(),
        None => Some(CellFormat::Other),
    };
    super::styles::number_cell(number, format, context.is_1904)
}

/// The error value of a `t="e"` cell; the ones calamine knows.
fn parse_error(value: &str) -> anyhow::Result<CellErrorType> {
    Ok(match value {
        "#DIV/0!" => CellErrorType::Div0,
        "#N/A" => CellErrorType::NA,
        "#NAME?" => CellErrorType::Name,
        "#NULL!" => CellErrorType::Null,
        "#NUM!" => CellErrorType::Num,
        "#REF!" => CellErrorType::Ref,
        "#VALUE!" => CellErrorType::Value,
        other => bail!("unknown error value {}", quoted_value(other)),
    })
}

/// Parses an A1 reference (`C4`, or a row number alone) into its 0-based row and column.
pub(super) fn parse_reference(reference: &[u8]) -> anyhow::Result<(u32, Option<u32>)> {
    if let Some(parsed) = parse_short_reference(reference) {
        return Ok(parsed);
    }
    let mut column: u32 = 0;
    let mut row: u32 = 0;
    let mut digits = false;
    for &byte in reference {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' if !digits => {
                column = column
                    .saturating_mul(26)
                    .saturating_add(u32::from(byte.to_ascii_uppercase() - b'A') + 1);
            }
            b'0'..=b'9' => {
                digits = true;
                row = row
                    .saturating_mul(10)
                    .saturating_add(u32::from(byte - b'0'));
            }
            _ => bail!(
                "{} is not a cell reference",
                quoted_value(&String::from_utf8_lossy(reference))
            ),
        }
    }
    let row = row.checked_sub(1).with_context(|| {
        format!(
            "{} has no row number",
            quoted_value(&String::from_utf8_lossy(reference))
        )
    })?;
    Ok((row, column.checked_sub(1)))
}

/// [`parse_reference`] of the shape every writer emits (up to three capital letters, up to
/// seven digits, not row 0) in plain arithmetic, as it is read once a cell; `None` for
/// anything else.
#[inline]
fn parse_short_reference(reference: &[u8]) -> Option<(u32, Option<u32>)> {
    let letters = reference
        .iter()
        .take_while(|byte| byte.is_ascii_uppercase())
        .count();
    let digits = &reference[letters..];
    if letters > 3 || !(1..=7).contains(&digits.len()) {
        return None;
    }
    let column = reference[..letters].iter().fold(0u32, |column, letter| {
        column * 26 + u32::from(letter - b'A') + 1
    });
    let row = short_decimal(digits)?;
    Some((row.checked_sub(1)?, column.checked_sub(1)))
}

/// The A1 name of a 0-based (row, column).
pub(super) fn cell_name((row_index, column_index): (u32, u32)) -> String {
    let mut letters = Vec::new();
    let mut column = u64::from(column_index) + 1;
    while column > 0 {
        let remainder = ((column - 1) % 26) as u8;
        letters.push(b'A' + remainder);
        column = (column - 1) / 26;
    }
    letters.reverse();
    format!(
        "{}{}",
        String::from_utf8_lossy(&letters),
        u64::from(row_index) + 1
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use calamine::{ExcelDateTime, ExcelDateTimeType};

    type Cell = ((u32, u32), Data);

    fn read(sheet: &str, formats: &[CellFormat]) -> anyhow::Result<(Vec<Cell>, SheetOutcome)> {
        let strings = SharedStrings::empty();
        let context = SheetContext {
            formats,
            is_1904: false,
            strings: &strings,
        };
        let mut cells = Vec::new();
        let outcome = read_sheet_cells(sheet.as_bytes(), &context, &mut |event| {
            if let SheetEvent::Cell(position, data) = event {
                cells.push((position, data));
            }
            ControlFlow::Continue(())
        })?;
        Ok((cells, outcome))
    }

    #[test]
    fn cells_and_rows_without_r_follow_the_previous_ones() {
        let sheet = "<worksheet><dimension ref=\"A1:XFD1048576\"/><sheetData>\
            <row><c><v>1</v></c><c t=\"b\"><v>1</v></c></row>\
            <row r=\"5\"><c r=\"C5\" t=\"str\"><f>x</f><v>a_x000D_b</v></c><c t=\"e\"><v>#N/A</v></c></row>\
            <row><c t=\"inlineStr\"><is><t>in</t></is></c><c><f>1+1</f></c><c><f t=\"shared\" si=\"0\"/><v/></c></row>\
            </sheetData></worksheet>";
        let (cells, outcome) = read(sheet, &[]).unwrap();
        assert_eq!(
            cells,
            vec![
                ((0, 0), Data::Float(1.0)),
                ((0, 1), Data::Bool(true)),
                ((4, 2), Data::String("a\rb".to_string())),
                ((4, 3), Data::Error(CellErrorType::NA)),
                ((5, 0), Data::String("in".to_string())),
            ]
        );
        assert_eq!(outcome.declared_last_row, Some(1_048_576));
        assert_eq!(outcome.uncached_formula_count, 2);
        assert_eq!(outcome.first_uncached_formula, Some((5, 1)));
        assert!(outcome.read_to_end);
    }

    #[test]
    fn cells_read_the_same_through_the_one_pass_path_and_the_general_one() {
        // the first of each pair is the shape the one-pass path reads; the second the same
        // cell in a shape it leaves to the general scanner
        let pairs = [
            (
                "<c r=\"B1\" s=\"1\"><v>45351</v></c>",
                "<c r = \"B1\" s=\"1\" ><v>45351</v></c>",
            ),
            (
                "<c r='B1' t='b' x='a>b'><v>1</v></c>",
                "<c r=\"B1\" t=\"b\"><v >1</v></c>",
            ),
            (
                "<c r=\"B1\" t=\"str\"><v>a_x000D_b</v></c>",
                "<x:c r=\"B1\" t=\"str\"><v>a_x000D_b</v></x:c>",
            ),
            (
                "<c r=\"B1\" t=\"n\"><v>-1.5e3</v></c>",
                "<c r=\"B1\" t=\"n\"><v>-1.5e3</v><!-- --></c>",
            ),
            (
                "<c r=\"B1\" t=\"s\" r=\"C9\"/>",
                "<c r=\"B1\" t=\"s\" r=\"C9\"></c>",
            ),
            (
                "<c t=\"e\" r=\"B1\"><v>#N/A</v></c>",
                "<c t=\"e\" r=\"B1\"><v>#N&#47;A</v></c>",
            ),
        ];
        for (plain, general) in pairs {
            let cells = |cell: &str| {
                let sheet = format!(
                    "<worksheet><sheetData><row r=\"1\">{cell}<c r=\"C1\"><v>7</v></c></row></sheetData></worksheet>"
                );
                read(&sheet, &[CellFormat::Other, CellFormat::DateTime])
                    .unwrap()
                    .0
            };
            assert_eq!(cells(plain), cells(general), "{plain}");
            assert_eq!(
                cells(plain).last(),
                Some(&((0, 2), Data::Float(7.0))),
                "{plain}"
            );
        }
    }

    #[test]
    fn rows_before_a_malformed_cell_go_on_first_and_the_earlier_error_wins() {
        // each read takes the complete table out of its SharedStrings: one per read
        let read_sheet_cells =
            |sheet: &[u8], visit: &mut dyn FnMut(SheetEvent) -> ControlFlow<()>| {
                let strings = SharedStrings::default();
                strings.publish_for_test(&["id", "name"], true);
                let context = SheetContext {
                    formats: &[],
                    is_1904: false,
                    strings: &strings,
                };
                read_sheet_cells(sheet, &context, visit)
            };
        let sheet = |second_row: &str| {
            format!(
                "<worksheet><sheetData><row r=\"1\"><c r=\"A1\" t=\"s\"><v>0</v></c></row>{second_row}\
                 <row r=\"3\"><c r=\"A3\" t=\"n\"><v>x</v></c></row></sheetData></worksheet>"
            )
        };
        // a reader that stops after the first row (as the header read does) never meets the
        // bad cell of row 3
        let mut first_rows = Vec::new();
        let outcome = read_sheet_cells(sheet("").as_bytes(), &mut |event| {
            first_rows.push(event);
            if first_rows.len() == 2 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .expect("the read stops before the bad cell");
        assert!(!outcome.read_to_end);
        assert_eq!(
            first_rows[0],
            SheetEvent::Cell((0, 0), Data::String("id".to_string()))
        );
        // the error of an earlier row (a missing shared string) is the one reported
        let row = "<row r=\"2\"><c r=\"A2\" t=\"s\"><v>9</v></c></row>";
        let message = format!(
            "{:#}",
            read_sheet_cells(sheet(row).as_bytes(), &mut |_| {
                ControlFlow::Continue(())
            })
            .unwrap_err()
        );
        assert!(message.contains("cell A2"), "{message}");
        let message = format!(
            "{:#}",
            read_sheet_cells(sheet("").as_bytes(), &mut |_| { ControlFlow::Continue(()) })
                .unwrap_err()
        );
        assert!(message.contains("cell A3"), "{message}");
    }

    #[test]
    fn styles_decide_dates_and_a_missing_style_is_a_number() {
        let sheet = "<worksheet><sheetData><row r=\"1\"><c r=\"A1\" s=\"1\"><v>45351</v></c>\
            <c r=\"B1\" s=\"9\"><v>2.5</v></c><c r=\"C1\"><v>x</v></c><c r=\"D1\" t=\"d\"><v>2024-02-29</v></c></row></sheetData></worksheet>";
        let (cells, _) = read(sheet, &[CellFormat::Other, CellFormat::DateTime]).unwrap();
        assert_eq!(
            cells,
            vec![
                (
                    (0, 0),
                    Data::DateTime(ExcelDateTime::new(
                        45351.0,
                        ExcelDateTimeType::DateTime,
                        false
                    ))
                ),
                ((0, 1), Data::Float(2.5)),
                ((0, 2), Data::String("x".to_string())),
                ((0, 3), Data::DateTimeIso("2024-02-29".to_string())),
            ]
        );
    }

    #[test]
    fn malformed_cells_are_errors_naming_the_cell() {
        for (sheet, expected) in [
            (
                "<row r=\"1\"><c r=\"B1\" t=\"s\"><v>0</v></c></row>",
                "cell B1: shared string 0 does not exist",
            ),
            (
                "<row r=\"1\"><c r=\"C1\" t=\"n\"><v>abc</v></c></row>",
                "cell C1: numeric cell holds \"abc\"",
            ),
            (
                "<row r=\"1\"><c r=\"D1\" t=\"e\"><v>#SPILL!</v></c></row>",
                "cell D1: unknown error value",
            ),
            (
                "<row r=\"1\"><c r=\"E1\"><v>1</v>",
                "cell E1: the worksheet ends inside it",
            ),
            (
                "<row r=\"1\"><c r=\"F1\"><x/></c></row>",
                "cell F1: unexpected <x> in a cell",
            ),
            (
                "<row r=\"1\"><c r=\"1\"><v>1</v></c></row>",
                "bad r attribute",
            ),
        ] {
            let xml = format!("<worksheet><sheetData>{sheet}</sheetData></worksheet>");
            let message = format!("{:#}", read(&xml, &[]).unwrap_err());
            assert!(message.contains(expected), "{message}");
        }
    }

    #[test]
    fn a_row_is_handed_on_as_soon_as_its_shared_strings_are_parsed() {
        let strings = SharedStrings::default();
        strings.publish_for_test(&["id", "name"], false);
        let (sender, receiver) = std::sync::mpsc::sync_channel(4);
        std::thread::scope(|scope| {
            let reader = scope.spawn(|| {
                let context = SheetContext {
                    formats: &[],
                    is_1904: false,
                    strings: &strings,
                };
                let sheet = "<worksheet><sheetData><row r=\"1\"><c r=\"A1\" t=\"s\"><v>0</v></c><c r=\"B1\" t=\"s\"><v>1</v></c></row>\
                    <row r=\"2\"><c r=\"A2\" t=\"s\"><v>2</v></c></row></sheetData></worksheet>";
                read_sheet_cells(sheet.as_bytes(), &context, &mut |event| {
                    sender.send(event).expect("the test receives");
                    ControlFlow::Continue(())
                })
            });
            // the first row arrives while the table is still incomplete
            assert_eq!(
                receiver.recv().unwrap(),
                SheetEvent::Cell((0, 0), Data::String("id".to_string()))
            );
            assert_eq!(
                receiver.recv().unwrap(),
                SheetEvent::Cell((0, 1), Data::String("name".to_string()))
            );
            assert_eq!(receiver.recv().unwrap(), SheetEvent::RowEnd);
            strings.publish_for_test(&["Alice"], true);
            assert_eq!(
                receiver.recv().unwrap(),
                SheetEvent::Cell((1, 0), Data::String("Alice".to_string()))
            );
            assert!(
                reader
                    .join()
                    .expect("no panic")
                    .expect("the sheet reads")
                    .read_to_end
            );
        });
    }

    #[test]
    fn references_and_names_round_trip() {
        assert_eq!(parse_reference(b"A1").unwrap(), (0, Some(0)));
        assert_eq!(
            parse_reference(b"XFD1048576").unwrap(),
            (1_048_575, Some(16_383))
        );
        assert_eq!(parse_reference(b"7").unwrap(), (6, None));
        assert!(parse_reference(b"A0").is_err());
        assert!(parse_reference(b"A1B").is_err());
        assert_eq!(
            parse_reference(b"ZZZZZZZZZZ99999999999").unwrap().0,
            u32::MAX - 1
        );
        assert_eq!(cell_name((3, 2)), "C4");
        assert_eq!(cell_name((0, 16_383)), "XFD1");
        assert_eq!(cell_name((0, 26)), "AA1");
    }
}
