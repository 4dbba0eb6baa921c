//! The reader: opens a workbook (calamine) or a CSV file, picks the sheet, and yields its
//! non-blank rows from the header row down as [`SheetRow`]s with 1-based row numbers.
//!
//! Blocking: call it from `spawn_blocking` or a plain thread. .xlsx/.xlsm and .xlsb are
//! streamed cell by cell (calamine's cell reader) and .ods by our own reader (`ods`, since
//! calamine's parses every sheet into a dense grid at open), so memory does not grow with
//! the row count; .xls is materialised by calamine as a range first. Every format feeds
//! one `RowAssembler`, so blank rows, the header row and row numbers are handled once. It
//! knows nothing of tables or types: `pipeline` converts what it yields.

mod ods;
mod xlsx;

use std::error::Error;
use std::fs::File;
use std::io::BufReader;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};
use calamine::{Data, DataRef, Range, Reader, Sheets, open_workbook_auto};

use crate::cli::XlsxReader;
use crate::convert::cell_text;

/// Widest sheet a row is assembled for: Excel's own limit (XFD), so a stray cell far right
/// cannot make a row allocate without bound.
const MAX_COLUMNS: u32 = 16_384;

/// Which file and sheet to read, and where the header is.
#[derive(Debug, Clone)]
pub struct SourceSpec {
    /// The workbook or CSV file.
    pub path: PathBuf,
    /// Sheet name, or 0-based index; `None` is the first sheet.
    pub sheet: Option<String>,
    /// 1-based row that holds the column names; rows above it are ignored.
    pub header_row: u32,
    /// Which reader reads .xlsx and .xlsm files.
    pub xlsx_reader: XlsxReader,
}

/// One non-blank row of the sheet.
#[derive(Debug, Clone, PartialEq)]
pub struct SheetRow {
    /// 1-based row number as the spreadsheet shows it (for CSV: the line the record starts on).
    pub row_number: u32,
    /// The row's cells from column A on; trailing empty cells may be missing.
    pub cells: Vec<Data>,
}

/// The header row: the first non-blank row at or below `--header-row`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The sheet actually read (for CSV: the file name).
    pub sheet_name: String,
    /// 1-based row number of the header.
    pub row_number: u32,
    /// The header cells as text, up to the last non-empty one.
    pub cells: Vec<String>,
    /// Data rows the sheet declares below the header (its `<dimension>`; .xlsx only): a
    /// hint for progress, never trusted for allocation.
    pub declared_row_count: Option<u64>,
}

/// What `read_rows` read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SheetSummary {
    /// The sheet actually read (for CSV: the file name).
    pub sheet_name: String,
    /// 1-based number of the last row the sheet declares, where the format says.
    pub declared_last_row: Option<u32>,
}

/// Reads the header row only.
pub fn read_header(spec: &SourceSpec) -> anyhow::Result<Header> {
    let mut first_row = None;
    let SheetSummary {
        sheet_name,
        declared_last_row,
    } = read_rows(spec, &mut |row| {
        first_row = Some(row);
        ControlFlow::Break(())
    })?;
    let Some(row) = first_row else {
        bail!(
            "sheet {sheet_name:?} of {} has no header: nothing at or below row {}",
            spec.path.display(),
            spec.header_row
        );
    };
    let mut cells: Vec<String> = row.cells.iter().map(cell_text).collect();
    while cells.last().is_some_and(|cell| cell.trim().is_empty()) {
        cells.pop();
    }
    Ok(Header {
        sheet_name,
        row_number: row.row_number,
        cells,
        declared_row_count: declared_last_row
            .map(|last_row| u64::from(last_row.saturating_sub(row.row_number))),
    })
}

/// Visits every non-blank row at or below the header row (the header itself first) until
/// `visit` breaks.
pub fn read_rows(
    spec: &SourceSpec,
    visit: &mut dyn FnMut(SheetRow) -> ControlFlow<()>,
) -> anyhow::Result<SheetSummary> {
    let path = &spec.path;
    if !path.exists() {
        bail!("file not found: {}", path.display());
    }
    let mut rows = RowAssembler {
        first_row_index: spec.header_row - 1,
        current: None,
        visit,
        stopped: false,
    };
    if extension(path).as_deref() == Some("csv") {
        read_csv(path, &mut rows)?;
        rows.flush();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        return Ok(SheetSummary {
            sheet_name: name.into_owned(),
            declared_last_row: None,
        });
    }
    if extension(path).as_deref() == Some("ods") {
        let mut workbook = ods::OdsWorkbook::open(path)?;
        let sheet_name = pick_sheet(&workbook.sheet_names()?, spec.sheet.as_deref(), path)?;
        workbook.read_sheet(&sheet_name, &mut |position, cell| {
            rows.push_owned(position, cell);
            if rows.stopped {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })?;
        rows.flush();
        return Ok(SheetSummary {
            sheet_name,
            declared_last_row: None,
        });
    }
    if spec.xlsx_reader == XlsxReader::Fast
        && matches!(extension(path).as_deref(), Some("xlsx" | "xlsm"))
    {
        return read_xlsx(spec, &mut rows);
    }
    let mut workbook = open_workbook(path)?;
    let sheet_name = pick_sheet(&workbook.sheet_names(), spec.sheet.as_deref(), path)?;
    let context = || format!("cannot read sheet {sheet_name:?} of {}", path.display());
    let mut declared_last_row = None;
    match &mut workbook {
        Sheets::Xlsx(xlsx) => {
            let mut reader = xlsx
                .worksheet_cells_reader(&sheet_name)
                .map_err(calamine_error)
                .with_context(context)?;
            declared_last_row = Some(reader.dimensions().end.0 + 1);
            while !rows.stopped {
                match reader
                    .next_cell()
                    .map_err(calamine_error)
                    .with_context(context)?
                {
                    Some(cell) => rows.push(cell.get_position(), cell.get_value()),
                    None => break,
                }
            }
        }
        Sheets::Xlsb(xlsb) => {
            let mut reader = xlsb
                .worksheet_cells_reader(&sheet_name)
                .map_err(calamine_error)
                .with_context(context)?;
            while !rows.stopped {
                match reader
                    .next_cell()
                    .map_err(calamine_error)
                    .with_context(context)?
                {
                    Some(cell) => rows.push(cell.get_position(), cell.get_value()),
                    None => break,
                }
            }
        }
        // Sheets::Ods never comes back: .ods files were read by `ods` above
        Sheets::Xls(_) | Sheets::Ods(_) => {
            let range = workbook
                .worksheet_range(&sheet_name)
                .map_err(calamine_error)
                .with_context(context)?;
            declared_last_row = range.end().map(|(last_row, _)| last_row + 1);
            read_range(&range, &mut rows);
        }
    }
    rows.flush();
    Ok(SheetSummary {
        sheet_name,
        declared_last_row,
    })
}

/// Reads .xlsx/.xlsm with our own reader (`xlsx`).
fn read_xlsx(spec: &SourceSpec, rows: &mut RowAssembler<'_>) -> anyhow::Result<SheetSummary> {
    let mut workbook = xlsx::XlsxWorkbook::open(&spec.path)?;
    let sheet_name = pick_sheet(&workbook.sheet_names(), spec.sheet.as_deref(), &spec.path)?;
    let read = workbook.read_sheet(&sheet_name, &mut |event| {
        match event {
            xlsx::SheetEvent::Cell(position, cell) => rows.push_owned(position, cell),
            // a complete row goes on at once (the header read stops there)
            xlsx::SheetEvent::RowEnd => rows.flush(),
        }
        if rows.stopped {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })?;
    rows.flush();
    Ok(SheetSummary {
        sheet_name,
        declared_last_row: read.declared_last_row,
    })
}

/// The innermost cause of `error`, as text.
///
/// calamine's errors (and zip's, quick-xml's) print their cause inside their own message
/// and also return it from `source()`, so anyhow's `{:#}` would repeat it once per level
/// (`Xlsx error: Zip error: invalid Zip archive: ...: invalid Zip archive: ...`); the
/// innermost one says what is wrong, and our context names the file.
fn innermost_cause(error: &(dyn Error + 'static)) -> String {
    let mut cause = error;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// A calamine error as a single-level anyhow error holding only its innermost cause.
fn calamine_error<E: Error + 'static>(error: E) -> anyhow::Error {
    anyhow!(innermost_cause(&error))
}

fn extension(path: &Path) -> Option<String> {
    path.extension()
        .map(|extension| extension.to_string_lossy().to_ascii_lowercase())
}

fn open_workbook(path: &Path) -> anyhow::Result<Sheets<BufReader<File>>> {
    let known = matches!(
        extension(path).as_deref(),
        Some("xlsx" | "xlsm" | "xlsb" | "xls" | "ods")
    );
    open_workbook_auto(path).map_err(calamine_error).with_context(|| {
        if known {
            format!("cannot open {}: not a readable workbook (corrupt or truncated?)", path.display())
        } else {
            format!(
                "cannot open {}: not a spreadsheet (expected .xlsx, .xlsm, .xlsb, .xls, .ods or .csv)",
                path.display()
            )
        }
    })
}

/// Resolves `--sheet`: an exact name first, then a 0-based index.
fn pick_sheet(names: &[String], wanted: Option<&str>, path: &Path) -> anyhow::Result<String> {
    let listed = || {
        names
            .iter()
            .map(|name| format!("{name:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let Some(wanted) = wanted else {
        return names
            .first()
            .cloned()
            .with_context(|| format!("{} has no sheets", path.display()));
    };
    if let Some(name) = names.iter().find(|name| name.as_str() == wanted) {
        return Ok(name.clone());
    }
    if let Ok(sheet_index) = wanted.trim().parse::<usize>() {
        return names.get(sheet_index).cloned().with_context(|| {
            format!(
                "sheet index {sheet_index} is out of range in {}: it has {} sheets ({}), counted from 0",
                path.display(),
                names.len(),
                listed()
            )
        });
    }
    bail!(
        "sheet {wanted:?} not found in {} (sheets: {})",
        path.display(),
        listed()
    )
}

fn read_range(range: &Range<Data>, rows: &mut RowAssembler<'_>) {
    let Some((start_row, start_column)) = range.start() else {
        return;
    };
    for (offset, cells) in range.rows().enumerate() {
        if rows.stopped {
            return;
        }
        let row_index = start_row + offset as u32;
        for (column_offset, cell) in cells.iter().enumerate() {
            if !matches!(cell, Data::Empty) {
                rows.push_owned(
                    (row_index, start_column + column_offset as u32),
                    cell.clone(),
                );
            }
        }
    }
}

fn read_csv(path: &Path, rows: &mut RowAssembler<'_>) -> anyhow::Result<()> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(BufReader::new(file));
    let mut record = csv::StringRecord::new();
    loop {
        let more = reader
            .read_record(&mut record)
            .with_context(|| format!("cannot read {} as UTF-8 CSV", path.display()))?;
        if !more || rows.stopped {
            return Ok(());
        }
        let line = record.position().map_or(0, |position| position.line());
        let row_index = u32::try_from(line.saturating_sub(1)).unwrap_or(u32::MAX);
        for (column, field) in record.iter().enumerate() {
            if !field.is_empty() {
                rows.push_owned((row_index, column as u32), Data::String(field.to_string()));
            }
        }
        // a record whose fields are all empty is a blank row and is skipped by flush
        rows.flush();
    }
}

/// Gathers cells that arrive in row-major order into rows, skipping rows above the header
/// row and blank rows.
struct RowAssembler<'a> {
    /// 0-based index of the header row.
    first_row_index: u32,
    current: Option<SheetRow>,
    visit: &'a mut dyn FnMut(SheetRow) -> ControlFlow<()>,
    stopped: bool,
}

impl RowAssembler<'_> {
    fn push(&mut self, position: (u32, u32), cell: &DataRef<'_>) {
        let owned = match cell {
            DataRef::Empty => return,
            DataRef::SharedString(text) => Data::String((*text).to_string()),
            DataRef::String(text) => Data::String(text.clone()),
            DataRef::Int(value) => Data::Int(*value),
            DataRef::Float(value) => Data::Float(*value),
            DataRef::Bool(value) => Data::Bool(*value),
            DataRef::DateTime(value) => Data::DateTime(*value),
            DataRef::DateTimeIso(text) => Data::DateTimeIso(text.clone()),
            DataRef::DurationIso(text) => Data::DurationIso(text.clone()),
            DataRef::Error(error) => Data::Error(error.clone()),
        };
        self.push_owned(position, owned);
    }

    fn push_owned(&mut self, (row_index, column_index): (u32, u32), cell: Data) {
        if row_index < self.first_row_index || column_index >= MAX_COLUMNS || self.stopped {
            return;
        }
        if matches!(&cell, Data::String(text) if text.is_empty()) {
            return;
        }
        let row_number = row_index + 1;
        if self
            .current
            .as_ref()
            .is_some_and(|row| row.row_number != row_number)
        {
            self.flush();
        }
        let row = self.current.get_or_insert_with(|| SheetRow {
            row_number,
            cells: Vec::new(),
        });
        let column = column_index as usize;
        if row.cells.len() <= column {
            row.cells.resize(column + 1, Data::Empty);
        }
        row.cells[column] = cell;
    }

    /// Hands the row gathered so far to the visitor (rows holding only empty cells never get
    /// here: empty cells are not pushed).
    fn flush(&mut self) {
        if let Some(row) = self.current.take()
            && !self.stopped
            && (self.visit)(row).is_break()
        {
            self.stopped = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(cells: &[((u32, u32), Data)], header_row: u32) -> Vec<SheetRow> {
        let mut seen = Vec::new();
        let mut visit = |row: SheetRow| {
            seen.push(row);
            ControlFlow::Continue(())
        };
        let mut rows = RowAssembler {
            first_row_index: header_row - 1,
            current: None,
            visit: &mut visit,
            stopped: false,
        };
        for (position, cell) in cells {
            rows.push_owned(*position, cell.clone());
        }
        rows.flush();
        seen
    }

    #[test]
    fn rows_are_assembled_with_sheet_row_numbers_and_blank_rows_skipped() {
        let text = |value: &str| Data::String(value.to_string());
        let cells = vec![
            ((0, 0), text("title")),
            ((1, 0), text("a")),
            ((1, 2), text("c")),
            ((2, 1), text("")),
            ((4, 1), Data::Float(2.0)),
        ];
        let rows = collect(&cells, 2);
        assert_eq!(
            rows,
            vec![
                SheetRow {
                    row_number: 2,
                    cells: vec![text("a"), Data::Empty, text("c")],
                },
                SheetRow {
                    row_number: 5,
                    cells: vec![Data::Empty, Data::Float(2.0)],
                },
            ]
        );
    }

    #[test]
    fn a_stray_cell_beyond_the_last_excel_column_is_ignored() {
        let rows = collect(&[((0, 0), Data::Int(1)), ((0, 5_000_000), Data::Int(2))], 1);
        assert_eq!(rows[0].cells, vec![Data::Int(1)]);
    }

    #[test]
    fn pick_sheet_prefers_names_then_indexes() {
        let names: Vec<String> = ["Q1", "2", "Q3"].map(String::from).to_vec();
        let path = Path::new("sales.xlsx");
        assert_eq!(pick_sheet(&names, None, path).unwrap(), "Q1");
        assert_eq!(pick_sheet(&names, Some("Q3"), path).unwrap(), "Q3");
        assert_eq!(pick_sheet(&names, Some("2"), path).unwrap(), "2");
        assert_eq!(pick_sheet(&names, Some("0"), path).unwrap(), "Q1");
        let missing = pick_sheet(&names, Some("Q4"), path)
            .unwrap_err()
            .to_string();
        assert_eq!(
            missing,
            r#"sheet "Q4" not found in sales.xlsx (sheets: "Q1", "2", "Q3")"#
        );
        assert!(pick_sheet(&names, Some("7"), path).is_err());
    }

    #[test]
    fn a_bad_workbook_is_one_line_with_only_the_innermost_cause() {
        let dir = std::env::temp_dir().join(format!("importer-source-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir is writable");
        for name in ["junk.xlsx", "junk.xlsb", "junk.xls", "junk.ods"] {
            let path = dir.join(name);
            std::fs::write(&path, b"not a workbook").expect("temp file is writable");
            let spec = SourceSpec {
                path: path.clone(),
                sheet: None,
                header_row: 1,
                xlsx_reader: XlsxReader::Calamine,
            };
            let message = format!("{:#}", read_header(&spec).unwrap_err());
            let prefix = format!(
                "cannot open {}: not a readable workbook (corrupt or truncated?): ",
                path.display()
            );
            assert!(message.starts_with(&prefix), "{message}");
            let cause = &message[prefix.len()..];
            // calamine's wrappers ("Xlsx error: Zip error: ...") are gone, and no part of
            // the cause is repeated
            assert!(!cause.contains(" error: "), "{message}");
            let parts: Vec<&str> = cause.split(": ").collect();
            let distinct: std::collections::HashSet<&str> = parts.iter().copied().collect();
            assert_eq!(parts.len(), distinct.len(), "{message}");
            assert!(!message.contains('\n'), "{message}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
