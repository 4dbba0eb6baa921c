//! A worksheet substream: from its BOF (at the offset BOUNDSHEET8 gave) to the matching
//! EOF, each cell record decoded into the calamine [`Data`] calamine's reader gives for it
//! and handed on in row-major order. Shared strings are lent out of the table (the row
//! limits are checked before anything is copied). Rows are assembled next, by the parent
//! module's `RowAssembler`.

use std::io::{Read, Seek};
use std::ops::ControlFlow;

use anyhow::{Context, anyhow, bail};
use calamine::{CellErrorType, Data};

use super::records::{Cursor, Record, Records};
use super::{BOF, EOF, Globals, MAX_RECORD_BYTES};
use crate::source::xlsx::{CellFormat, number_cell};
use crate::source::{CellEmitter, CellView, cell_name};

/// Most cells gathered from a sheet whose cells are out of row order (they are sorted
/// before they go on): about 200 MiB, far more than any real unordered sheet holds.
pub(super) const MAX_UNORDERED_CELLS: usize = 4 << 20;

const FORMULA: u16 = 0x0006;
const NUMBER: u16 = 0x0203;
const LABEL: u16 = 0x0204;
const BOOLERR: u16 = 0x0205;
const STRING: u16 = 0x0207;
const RK: u16 = 0x027E;
const RSTRING: u16 = 0x00D6;
const LABELSST: u16 = 0x00FD;
const MULRK: u16 = 0x00BD;

/// The records that hold cells (STRING holds the value of the FORMULA before it).
const CELL_RECORDS: [u16; 8] = [
    FORMULA, NUMBER, LABEL, BOOLERR, RK, RSTRING, LABELSST, MULRK,
];

/// A decoded cell: its value, or the index of its shared string.
#[derive(Debug, Clone, PartialEq)]
enum Value {
    Data(Data),
    Shared(u32),
}

/// Streams the cells of the sheet whose BOF is at `offset` to `emit`.
pub(super) fn read_cells<R: Read + Seek>(
    records: &mut Records<R>,
    offset: u64,
    globals: &Globals,
    emit: &mut CellEmitter<'_>,
) -> anyhow::Result<()> {
    records.seek(offset)?;
    let in_order = cells_in_row_order(records)?;
    records.seek(offset)?;
    let mut sheet = SheetState::default();
    let mut decoded = Vec::new();
    let mut unordered: Vec<((u32, u32), Value)> = Vec::new();
    loop {
        let Some(record) = next_sheet_record(records, &mut sheet)? else {
            break;
        };
        decoded.clear();
        decode_record(&record, globals, &mut sheet, &mut decoded)?;
        if in_order {
            for (position, value) in decoded.drain(..) {
                if hand_on(position, &value, globals, emit)?.is_break() {
                    return Ok(());
                }
            }
        } else {
            if unordered.len() + decoded.len() > MAX_UNORDERED_CELLS {
                bail!(
                    "its cells are out of row order and more than {MAX_UNORDERED_CELLS} (save it as .xlsx or pass --xls-reader calamine)"
                );
            }
            unordered.append(&mut decoded);
        }
    }
    // stable: of two cells at one position, the later record wins, as in calamine
    unordered.sort_by_key(|(position, _)| *position);
    for (position, value) in unordered {
        if hand_on(position, &value, globals, emit)?.is_break() {
            break;
        }
    }
    Ok(())
}

/// Where the record loop of a sheet is.
#[derive(Default)]
struct SheetState {
    seen_bof: bool,
    /// Depth of embedded substreams (charts) being skipped.
    depth: usize,
    /// The cell of the last FORMULA whose string result is in the STRING record next.
    pending_string: Option<(u32, u32)>,
    text: String,
    units: Vec<u16>,
}

/// The next record of the sheet itself that holds a cell; `None` at its EOF (or at the
/// end of the stream).
fn next_sheet_record<'a, R: Read + Seek>(
    records: &'a mut Records<R>,
    sheet: &mut SheetState,
) -> anyhow::Result<Option<Record<'a>>> {
    loop {
        let keep =
            |kind| kind == BOF || kind == EOF || kind == STRING || CELL_RECORDS.contains(&kind);
        let Some(kind) = records.next(keep, |_| MAX_RECORD_BYTES)? else {
            return Ok(None);
        };
        match kind {
            BOF if !sheet.seen_bof => sheet.seen_bof = true,
            BOF => sheet.depth += 1,
            EOF if sheet.depth == 0 => return Ok(None),
            EOF => sheet.depth -= 1,
            _ if sheet.depth > 0 => {}
            _ => return Ok(Some(records.current())),
        }
    }
}

/// Whether the rows of the sheet's cells never go back (a first pass, positions only).
fn cells_in_row_order<R: Read + Seek>(records: &mut Records<R>) -> anyhow::Result<bool> {
    let mut sheet = SheetState::default();
    let mut last_row = 0;
    while let Some(record) = next_sheet_record(records, &mut sheet)? {
        if record.kind == STRING || record.body.len() < 2 {
            continue;
        }
        let row = u32::from(u16::from_le_bytes([record.body[0], record.body[1]]));
        if row < last_row {
            return Ok(false);
        }
        last_row = row;
    }
    Ok(true)
}

/// Hands one decoded cell on, lending a shared string out of the table.
fn hand_on(
    position: (u32, u32),
    value: &Value,
    globals: &Globals,
    emit: &mut CellEmitter<'_>,
) -> anyhow::Result<ControlFlow<()>> {
    let view = match value {
        Value::Shared(index) => CellView::Text(
            globals
                .strings
                .get(*index)
                .with_context(|| format!("cell {}", cell_name(position.0, position.1)))?,
        ),
        Value::Data(data) => match CellView::from_data(data) {
            Some(view) => view,
            None => return Ok(ControlFlow::Continue(())),
        },
    };
    Ok(emit(position, view))
}

/// The name a record goes by in messages.
fn record_name(kind: u16) -> &'static str {
    match kind {
        FORMULA => "FORMULA",
        NUMBER => "NUMBER",
        LABEL => "LABEL",
        BOOLERR => "BOOLERR",
        STRING => "STRING",
        RK => "RK",
        RSTRING => "RSTRING",
        LABELSST => "LABELSST",
        MULRK => "MULRK",
        _ => "cell",
    }
}

/// Decodes one cell record into `decoded` (MULRK gives several cells, STRING the one of
/// the FORMULA before it).
fn decode_record(
    record: &Record<'_>,
    globals: &Globals,
    sheet: &mut SheetState,
    decoded: &mut Vec<((u32, u32), Value)>,
) -> anyhow::Result<()> {
    let mut cursor = Cursor::new(record, 0);
    if record.kind == STRING {
        if let Some(position) = sheet.pending_string.take() {
            sheet.text.clear();
            cursor
                .unicode_string(&mut sheet.text, &mut sheet.units)
                .with_context(|| {
                    format!(
                        "bad STRING record for cell {}",
                        cell_name(position.0, position.1)
                    )
                })?;
            decoded.push((position, Value::Data(Data::String(sheet.text.clone()))));
        }
        return Ok(());
    }
    let bad = || format!("bad {} record", record_name(record.kind));
    let row = u32::from(cursor.u16().with_context(bad)?);
    let column = u32::from(cursor.u16().with_context(bad)?);
    let position = (row, column);
    let at = || {
        format!(
            "bad {} record at cell {}",
            record_name(record.kind),
            cell_name(row, column)
        )
    };
    // a FORMULA's string result is only in the STRING record right after it
    sheet.pending_string = None;
    let format = |xf: u16| globals.formats.get(usize::from(xf)).copied();
    let value = match record.kind {
        NUMBER => {
            let xf = cursor.u16().with_context(at)?;
            let number = f64_at(&mut cursor).with_context(at)?;
            Value::Data(number_cell(number, format(xf), globals.is_1904))
        }
        RK => {
            let xf = cursor.u16().with_context(at)?;
            let rk = cursor.u32().with_context(at)?;
            Value::Data(rk_cell(rk, format(xf), globals.is_1904))
        }
        MULRK => {
            // column of the first cell, then (xf, rk) pairs, then the last column
            let pairs = record.body.len().saturating_sub(6);
            if record.body.len() < 6 || !pairs.is_multiple_of(6) {
                bail!("{}: {} bytes", at(), record.body.len());
            }
            let last_column = u32::from(u16::from_le_bytes([
                record.body[record.body.len() - 2],
                record.body[record.body.len() - 1],
            ]));
            let count = pairs / 6;
            if last_column < column || (last_column - column + 1) as usize != count {
                bail!(
                    "{}: columns {column} to {last_column} in {count} cells",
                    at()
                );
            }
            for offset in 0..count as u32 {
                let xf = cursor.u16().with_context(at)?;
                let rk = cursor.u32().with_context(at)?;
                decoded.push((
                    (row, column + offset),
                    Value::Data(rk_cell(rk, format(xf), globals.is_1904)),
                ));
            }
            return Ok(());
        }
        LABELSST => {
            cursor.skip(2).with_context(at)?;
            Value::Shared(cursor.u32().with_context(at)?)
        }
        LABEL | RSTRING => {
            cursor.skip(2).with_context(at)?;
            sheet.text.clear();
            cursor
                .unicode_string(&mut sheet.text, &mut sheet.units)
                .with_context(at)?;
            Value::Data(Data::String(sheet.text.clone()))
        }
        BOOLERR => {
            cursor.skip(2).with_context(at)?;
            let value = cursor.u8().with_context(at)?;
            match cursor.u8().with_context(at)? {
                0 => Value::Data(Data::Bool(value != 0)),
                1 => Value::Data(Data::Error(error_code(value).with_context(at)?)),
                other => bail!("{}: fError is {other}", at()),
            }
        }
        FORMULA => {
            let xf = cursor.u16().with_context(at)?;
            let result = cursor.bytes(8).with_context(at)?;
            // the rest (flags, chn, the parsed expression) is never evaluated
            if result[6..8] != [0xFF, 0xFF] {
                let number = f64::from_le_bytes(result.try_into().expect("8 bytes were read"));
                Value::Data(number_cell(number, format(xf), globals.is_1904))
            } else {
                match result[0] {
                    0x00 => {
                        sheet.pending_string = Some(position);
                        return Ok(());
                    }
                    0x01 => Value::Data(Data::Bool(result[2] != 0)),
                    0x02 => Value::Data(Data::Error(error_code(result[2]).with_context(at)?)),
                    // an empty string: nothing to load
                    0x03 => return Ok(()),
                    other => bail!("{}: unknown result type {other}", at()),
                }
            }
        }
        other => unreachable!("record 0x{other:04X} is not kept"),
    };
    decoded.push((position, value));
    Ok(())
}

fn f64_at(cursor: &mut Cursor<'_>) -> anyhow::Result<f64> {
    let bytes = cursor.bytes(8)?;
    Ok(f64::from_le_bytes(
        bytes.try_into().expect("8 bytes were read"),
    ))
}

/// An RK number (30 bits of a float's top or a signed integer, maybe ×100), as calamine
/// decodes it: an integer stays an integer unless it is hundredths with a remainder.
fn rk_cell(rk: u32, format: Option<CellFormat>, is_1904: bool) -> Data {
    let divided = rk & 1 != 0;
    if rk & 2 != 0 {
        let value = i64::from((rk as i32) >> 2);
        if divided && value % 100 != 0 {
            return number_cell(value as f64 / 100.0, format, is_1904);
        }
        let value = if divided { value / 100 } else { value };
        return match format {
            Some(CellFormat::DateTime | CellFormat::TimeDelta) => {
                number_cell(value as f64, format, is_1904)
            }
            _ => Data::Int(value),
        };
    }
    let number = f64::from_bits(u64::from(rk & 0xFFFF_FFFC) << 32);
    number_cell(
        if divided { number / 100.0 } else { number },
        format,
        is_1904,
    )
}

/// The error of a BOOLERR or FORMULA error code.
fn error_code(code: u8) -> anyhow::Result<CellErrorType> {
    Ok(match code {
        0x00 => CellErrorType::Null,
        0x07 => CellErrorType::Div0,
        0x0F => CellErrorType::Value,
        0x17 => CellErrorType::Ref,
        0x1D => CellErrorType::Name,
        0x24 => CellErrorType::Num,
        0x2A => CellErrorType::NA,
        0x2B => CellErrorType::GettingData,
        other => return Err(anyhow!("unknown error code 0x{other:02X}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rk_numbers_decode_as_calamine_does() {
        // (rk, expected)
        let cases = [
            // integer 5
            ((5 << 2) | 2, Data::Int(5)),
            // integer -3
            (((-3_i32 << 2) as u32) | 2, Data::Int(-3)),
            // 1234 / 100 = 12.34
            ((1234 << 2) | 3, Data::Float(12.34)),
            // 1200 / 100 = 12, an integer
            ((1200 << 2) | 3, Data::Int(12)),
            // the float 1.0: top 30 bits of 0x3FF0000000000000
            (0x3FF0_0000, Data::Float(1.0)),
            // 1.0 / 100
            (0x3FF0_0001, Data::Float(0.01)),
        ];
        for (rk, expected) in cases {
            assert_eq!(rk_cell(rk, None, false), expected, "rk 0x{rk:08X}");
        }
        assert!(matches!(
            rk_cell((45000 << 2) | 2, Some(CellFormat::DateTime), false),
            Data::DateTime(_)
        ));
    }

    #[test]
    fn error_codes_are_the_ones_excel_writes() {
        assert_eq!(error_code(0x07).unwrap(), CellErrorType::Div0);
        assert_eq!(error_code(0x2A).unwrap(), CellErrorType::NA);
        assert!(error_code(0x99).is_err());
    }
}
