//! The reader: opens a workbook (calamine) or a CSV file, picks the sheet, and yields its
//! non-blank rows from the header row down as [`SheetRow`]s with 1-based row numbers.
//!
//! Blocking: call it from `spawn_blocking` or a plain thread. .xlsx/.xlsm (`xlsx`), .xls
//! (`xls`, BIFF8) and .ods (`ods`) are streamed cell by cell by readers of our own, and
//! .xlsb by calamine's cell reader, so memory does not grow with the row count; only an
//! .xls read by calamine (`--xls-reader calamine`, or one older than BIFF8) is
//! materialised as a range first. Every format feeds
//! one `RowAssembler`, so blank rows, the header row, row numbers and the text limits
//! ([`MAX_CELL_TEXT_BYTES`], [`MAX_ROW_TEXT_BYTES`]) are handled once. It knows nothing of
//! tables or types: `pipeline` converts what it yields. CSV is read by `csv` (delimiter,
//! quote, encoding, exact line numbers), standard input is spooled by `stdin`, and `sniff`
//! checks that a workbook's first bytes fit its name.
//!
//! calamine can panic, abort the process on an allocation a file claims, or loop for
//! minutes on a small hostile file. The binary therefore reads every calamine format in a
//! child process with memory and CPU limits (`isolated`, switched on by
//! [`contain_calamine_in`]); library callers (tests, benches) read in-process.

mod csv;
#[cfg(test)]
mod fuzz_tests;
mod isolated;
mod ods;
mod sniff;
mod stdin;
mod xls;
mod xlsx;

pub use csv::CsvOptions;
pub use stdin::{StdinSpool, input_name, is_stdin};

use std::error::Error;
use std::fs::File;
use std::io::BufReader;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{Context, anyhow, bail};
use calamine::{
    CellErrorType, Data, DataRef, ExcelDateTime, Range, Reader, Sheets, open_workbook_auto,
};

use crate::convert::{Rejection, cell_text};
use crate::message::{quoted, shown_path};

pub use isolated::serve_cells;
pub use sniff::{UPLOAD_HEAD_BYTES, upload_format};

/// Widest sheet a row is assembled for: Excel's own limit (XFD), so a stray cell far right
/// cannot make a row allocate without bound.
const MAX_COLUMNS: u32 = 16_384;

/// Tallest sheet: Excel's own limit (and LibreOffice's without jumbo sheets). A value a
/// file repeats past it is an error, not millions of rows.
const MAX_ROWS: u32 = 1 << 20;

/// Most bytes of text one workbook cell may hold: 1 MiB. Excel's own limit is 32,767
/// characters (at most 128 KiB in UTF-8), and LibreOffice's is similar, so no real cell
/// comes near it, while a hostile file can claim gigabytes; a longer cell is a fatal error
/// naming the cell, in the header and in data rows alike (it means the file is broken, not
/// that one row is bad).
pub const MAX_CELL_TEXT_BYTES: usize = 1 << 20;

/// Most bytes of text one row may hold: 16 MiB, a thousand times a wide real row. It
/// stops a file that references one long string from every cell of a row (16,384 × 1 MiB)
/// from making a row of gigabytes.
pub const MAX_ROW_TEXT_BYTES: usize = 16 << 20;

/// Most bytes of text one sheet may hold, all its rows together: 4 GiB. A real sheet
/// stays far below (a million rows of 30 text cells of 100 bytes is 3 GB, and neither
/// Excel nor LibreOffice opens such a sheet), while a small file can make a few cells
/// stand for terabytes: one 1 MB shared string in every cell of many rows (.xlsx), or a
/// row of long values repeated over a hundred thousand rows (.ods, refused there before
/// the first copy). Past it, reading stops with one error.
pub const MAX_SHEET_TEXT_BYTES: u64 = 4 << 30;

/// Where a calamine reader hands each non-empty cell, at its 0-based (row, column).
pub(crate) type CellEmitter<'a> = dyn FnMut((u32, u32), CellView<'_>) -> ControlFlow<()> + 'a;

/// The executable that reads calamine formats in a child process, once the binary said so.
static CALAMINE_CHILD: OnceLock<PathBuf> = OnceLock::new();

/// Reads every calamine format (.xls, .xlsb, .xlsx/.xlsm) from now on in a child process
/// running `executable read-cells` with memory and CPU limits, so that a panic, an abort or
/// a runaway allocation inside calamine becomes one error instead of taking the process
/// down. The binary calls it once at start; without it (tests, benches, other library
/// users, whose executable is not `importer`) calamine runs in-process.
pub fn contain_calamine_in(executable: PathBuf) {
    // a second call changes nothing: the first executable stays
    CALAMINE_CHILD.get_or_init(|| executable);
}

/// Which reader reads .xlsx and .xlsm files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum XlsxReader {
    /// Our streaming reader: shared strings and sheet parsed concurrently.
    #[default]
    Fast,
    /// calamine's cell reader, for a file the fast reader gets wrong.
    Calamine,
}

/// Which reader reads .xls files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum XlsReader {
    /// Our streaming BIFF8 reader: rows as the records come, no grid of the sheet.
    #[default]
    Fast,
    /// calamine's reader (in a contained child process), for a file the fast reader gets wrong.
    Calamine,
}

/// Which file and sheet to read, and where the header is.
#[derive(Debug, Clone)]
pub struct SourceSpec {
    /// The workbook or CSV file.
    pub path: PathBuf,
    /// Sheet name, or 0-based index; `None` is the first sheet.
    pub sheet: Option<String>,
    /// 1-based row that holds the column names; rows above it are ignored.
    pub header_row: u32,
    /// How a CSV file is read (and whether any file is read as CSV).
    pub csv: CsvOptions,
    /// Which reader reads .xlsx and .xlsm files.
    pub xlsx_reader: XlsxReader,
    /// Which reader reads .xls files.
    pub xls_reader: XlsReader,
}

/// One non-blank row of the sheet.
#[derive(Debug, Clone, PartialEq)]
pub struct SheetRow {
    /// 1-based row number as the spreadsheet shows it (for CSV: the line the record starts on).
    pub row_number: u32,
    /// The row's cells from column A on; trailing empty cells may be missing.
    pub cells: Vec<Data>,
    /// Why the reader could not read the row as it is (a CSV record that is not valid
    /// UTF-8): the pipeline rejects it with this, showing `cells` as well as they could
    /// be read. `None` for every readable row.
    pub rejection: Option<Rejection>,
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
    read_header_row(spec).map_err(|error| named_by_label(error, spec))
}

/// Visits every non-blank row at or below the header row (the header itself first) until
/// `visit` breaks.
pub fn read_rows(
    spec: &SourceSpec,
    visit: &mut dyn FnMut(SheetRow) -> ControlFlow<()>,
) -> anyhow::Result<SheetSummary> {
    read_sheet_rows(spec, visit).map_err(|error| named_by_label(error, spec))
}

/// `error` with the file named by the spec's label wherever it names the path: the readers
/// name the file they open, and a labelled file (an upload saved under a name of the
/// service's own) must be shown by the label only.
fn named_by_label(error: anyhow::Error, spec: &SourceSpec) -> anyhow::Error {
    let Some(label) = &spec.csv.label else {
        return error;
    };
    let text = format!("{error:#}");
    let renamed = crate::message::with_path_shown_as(&text, &spec.path, label);
    match renamed == text {
        true => error,
        false => anyhow!(renamed),
    }
}

fn read_header_row(spec: &SourceSpec) -> anyhow::Result<Header> {
    let mut first_row = None;
    let SheetSummary {
        sheet_name,
        declared_last_row,
    } = read_rows(spec, &mut |row| {
        first_row = Some(row);
        ControlFlow::Break(())
    })?;
    let Some(row) = first_row else {
        if csv::is_csv(spec) {
            return Err(csv::no_header_line(spec));
        }
        bail!(
            "sheet {} of {} has no header: nothing at or below row {}",
            quoted(&sheet_name),
            shown_path(&spec.path),
            spec.header_row
        );
    };
    if row.rejection.is_some() {
        return Err(csv::unreadable_header(spec, &row));
    }
    let mut cells: Vec<String> = row.cells.iter().map(cell_text).collect();
    while cells.last().is_some_and(|cell| cell.trim().is_empty()) {
        cells.pop();
    }
    if csv::is_csv(spec) {
        csv::check_header(spec, &cells)?;
    }
    Ok(Header {
        sheet_name,
        row_number: row.row_number,
        cells,
        declared_row_count: declared_last_row
            .map(|last_row| u64::from(last_row.saturating_sub(row.row_number))),
    })
}

fn read_sheet_rows(
    spec: &SourceSpec,
    visit: &mut dyn FnMut(SheetRow) -> ControlFlow<()>,
) -> anyhow::Result<SheetSummary> {
    let path = &spec.path;
    if !path.exists() {
        bail!("file not found: {}", shown_path(path));
    }
    if path.is_dir() {
        bail!(
            "{} is a directory; name a spreadsheet or CSV file",
            shown_path(path)
        );
    }
    let mut rows = RowAssembler::new(spec.header_row - 1, visit);
    // CSV fields are bounded by the CSV reader itself; workbook cells by the limits here
    rows.bounded = !csv::is_csv(spec);
    if csv::is_csv(spec) {
        let sheet_name = csv::read_csv(spec, &mut rows)?;
        rows.finish()?;
        return Ok(SheetSummary {
            sheet_name,
            declared_last_row: None,
        });
    }
    sniff::check_workbook(path, extension(path).as_deref().unwrap_or_default())?;
    if spec.xlsx_reader == XlsxReader::Fast
        && matches!(extension(path).as_deref(), Some("xlsx" | "xlsm"))
    {
        return read_xlsx(spec, &mut rows);
    }
    if spec.xls_reader == XlsReader::Fast && extension(path).as_deref() == Some("xls") {
        match xls::XlsWorkbook::open(path)? {
            xls::Opened::Biff8(workbook) => return read_xls(spec, *workbook, &mut rows),
            // Excel 5/95 and older: calamine reads them (contained, as below)
            xls::Opened::OlderBiff(version) => {
                tracing::debug!(version, "an .xls older than BIFF8 goes to calamine");
            }
        }
    }
    if extension(path).as_deref() == Some("ods") {
        let mut workbook = ods::OdsWorkbook::open(path)?;
        let names = match spec.sheet {
            None => workbook.first_sheet_name()?,
            Some(_) => workbook.sheet_names()?,
        };
        let sheet_name = pick_sheet(&names, spec.sheet.as_deref(), path)?;
        workbook.read_sheet(&sheet_name, &mut rows)?;
        rows.finish()
            .with_context(|| sheet_context(&sheet_name, path))?;
        return Ok(SheetSummary {
            sheet_name,
            declared_last_row: None,
        });
    }
    let result = match CALAMINE_CHILD.get() {
        Some(executable) => {
            isolated::read_sheet(executable, path, spec.sheet.as_deref(), &mut rows)
        }
        None => read_calamine(
            path,
            spec.sheet.as_deref(),
            &mut |_| {},
            &mut |position, cell| {
                rows.push(position, cell);
                if rows.stopped {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            },
        ),
    };
    let summary = result?;
    rows.finish()
        .with_context(|| sheet_context(&summary.sheet_name, path))?;
    Ok(summary)
}

/// The context of an error inside a sheet: `cannot read sheet "S" of FILE`.
fn sheet_context(sheet_name: &str, path: &Path) -> String {
    format!(
        "cannot read sheet {} of {}",
        quoted(sheet_name),
        shown_path(path)
    )
}

/// Streams the non-empty cells of the chosen sheet of a workbook calamine reads (.xlsx,
/// .xlsm, .xlsb, .xls) to `emit`, in row-major order, until the sheet ends or `emit`
/// breaks; `started` gets the sheet's name (and declared extent) before the first cell.
///
/// This is the code that may panic, abort or allocate what a file claims: the binary runs
/// it in a contained child process (`isolated`), tests and benches call it in-process.
pub(crate) fn read_calamine(
    path: &Path,
    wanted_sheet: Option<&str>,
    started: &mut dyn FnMut(&SheetSummary),
    emit: &mut CellEmitter<'_>,
) -> anyhow::Result<SheetSummary> {
    let mut workbook = open_workbook(path)?;
    let sheet_name = pick_sheet(&workbook.sheet_names(), wanted_sheet, path)?;
    let context = || sheet_context(&sheet_name, path);
    let mut summary = SheetSummary {
        sheet_name: sheet_name.clone(),
        declared_last_row: None,
    };
    match &mut workbook {
        Sheets::Xlsx(xlsx) => {
            let mut reader = xlsx
                .worksheet_cells_reader(&sheet_name)
                .map_err(calamine_error)
                .with_context(context)?;
            summary.declared_last_row = Some(reader.dimensions().end.0.saturating_add(1));
            started(&summary);
            while let Some(cell) = reader
                .next_cell()
                .map_err(calamine_error)
                .with_context(context)?
            {
                if let Some(view) = CellView::from_data_ref(cell.get_value())
                    && emit(cell.get_position(), view).is_break()
                {
                    break;
                }
            }
        }
        Sheets::Xlsb(xlsb) => {
            let mut reader = xlsb
                .worksheet_cells_reader(&sheet_name)
                .map_err(calamine_error)
                .with_context(context)?;
            started(&summary);
            while let Some(cell) = reader
                .next_cell()
                .map_err(calamine_error)
                .with_context(context)?
            {
                if let Some(view) = CellView::from_data_ref(cell.get_value())
                    && emit(cell.get_position(), view).is_break()
                {
                    break;
                }
            }
        }
        // Sheets::Ods never comes back: .ods files are read by `ods`
        Sheets::Xls(_) | Sheets::Ods(_) => {
            let range = workbook
                .worksheet_range(&sheet_name)
                .map_err(calamine_error)
                .with_context(context)?;
            summary.declared_last_row = range.end().map(|(last_row, _)| last_row.saturating_add(1));
            started(&summary);
            read_range(&range, emit);
        }
    }
    Ok(summary)
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
    // the text limits of workbook cells hold for this reader too
    rows.finish()
        .with_context(|| sheet_context(&sheet_name, &spec.path))?;
    Ok(SheetSummary {
        sheet_name,
        declared_last_row: read.declared_last_row,
    })
}

/// Reads a BIFF8 .xls with our own reader (`xls`).
fn read_xls(
    spec: &SourceSpec,
    mut workbook: xls::XlsWorkbook,
    rows: &mut RowAssembler<'_>,
) -> anyhow::Result<SheetSummary> {
    let sheet_name = pick_sheet(&workbook.sheet_names(), spec.sheet.as_deref(), &spec.path)?;
    workbook.read_sheet(&sheet_name, &mut |position, cell| {
        rows.push(position, cell);
        rows.flow()
    })?;
    rows.finish()
        .with_context(|| sheet_context(&sheet_name, &spec.path))?;
    Ok(SheetSummary {
        sheet_name,
        declared_last_row: None,
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
/// Its text is escaped: calamine quotes zip member names and markup from the file.
fn calamine_error<E: Error + 'static>(error: E) -> anyhow::Error {
    anyhow!(crate::message::shown(&innermost_cause(&error)))
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
            format!("cannot open {}: not a readable workbook (corrupt or truncated?)", shown_path(path))
        } else {
            format!(
                "cannot open {}: not a spreadsheet (expected .xlsx, .xlsm, .xlsb, .xls, .ods or .csv)",
                shown_path(path)
            )
        }
    })
}

/// Resolves `--sheet`: an exact name first, then a 0-based index.
fn pick_sheet(names: &[String], wanted: Option<&str>, path: &Path) -> anyhow::Result<String> {
    let listed = || {
        names
            .iter()
            .map(|name| quoted(name))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let Some(wanted) = wanted else {
        return names
            .first()
            .cloned()
            .with_context(|| format!("{} has no sheets", shown_path(path)));
    };
    if let Some(name) = names.iter().find(|name| name.as_str() == wanted) {
        return Ok(name.clone());
    }
    if let Ok(sheet_index) = wanted.trim().parse::<usize>() {
        return names.get(sheet_index).cloned().with_context(|| {
            format!(
                "sheet index {sheet_index} is out of range in {}: it has {} sheets ({}), counted from 0",
                shown_path(path),
                names.len(),
                listed()
            )
        });
    }
    bail!(
        "sheet {} not found in {} (sheets: {})",
        quoted(wanted),
        shown_path(path),
        listed()
    )
}

fn read_range(range: &Range<Data>, emit: &mut CellEmitter<'_>) {
    let Some((start_row, start_column)) = range.start() else {
        return;
    };
    for (offset, cells) in range.rows().enumerate() {
        let row_index = start_row.saturating_add(offset as u32);
        for (column_offset, cell) in cells.iter().enumerate() {
            if let Some(view) = CellView::from_data(cell)
                && emit(
                    (row_index, start_column.saturating_add(column_offset as u32)),
                    view,
                )
                .is_break()
            {
                return;
            }
        }
    }
}

/// Gathers cells that arrive in row-major order into rows, skipping rows above the header
/// row and blank rows, and holding each row to the text limits.
struct RowAssembler<'a> {
    /// 0-based index of the header row.
    first_row_index: u32,
    current: Option<SheetRow>,
    /// Bytes of text in `current`, for [`MAX_ROW_TEXT_BYTES`].
    current_text_bytes: usize,
    /// Bytes of text in the rows read so far, for [`MAX_SHEET_TEXT_BYTES`].
    sheet_text_bytes: u64,
    visit: &'a mut dyn FnMut(SheetRow) -> ControlFlow<()>,
    stopped: bool,
    /// Whether the cell and row text limits apply (workbooks; CSV bounds its own fields).
    bounded: bool,
    /// The error that stopped reading: a cell or a row past a limit.
    error: Option<anyhow::Error>,
}

impl<'a> RowAssembler<'a> {
    fn new(first_row_index: u32, visit: &'a mut dyn FnMut(SheetRow) -> ControlFlow<()>) -> Self {
        Self {
            first_row_index,
            current: None,
            current_text_bytes: 0,
            sheet_text_bytes: 0,
            visit,
            stopped: false,
            bounded: true,
            error: None,
        }
    }

    fn push(&mut self, position: (u32, u32), cell: CellView<'_>) {
        // the length is checked before the text is copied out of the reader
        if let Some(text) = cell.text()
            && self.is_too_long(position, text.len())
        {
            return;
        }
        self.push_owned(position, cell.into_data());
    }

    fn push_owned(&mut self, (row_index, column_index): (u32, u32), cell: Data) {
        if row_index < self.first_row_index || column_index >= MAX_COLUMNS || self.stopped {
            return;
        }
        if matches!(&cell, Data::String(text) if text.is_empty()) {
            return;
        }
        let row_number = row_index.saturating_add(1);
        if self
            .current
            .as_ref()
            .is_some_and(|row| row.row_number != row_number)
        {
            self.flush();
            if self.stopped {
                return;
            }
        }
        if let Some(text) = text_of(&cell) {
            let length = text.len();
            if self.is_too_long((row_index, column_index), length) {
                return;
            }
            self.current_text_bytes = self.current_text_bytes.saturating_add(length);
            if self.bounded && self.current_text_bytes > MAX_ROW_TEXT_BYTES {
                self.fail(anyhow!(
                    "row {row_number} holds more than {} of text: no workbook row is that long (one value repeated across the row?)",
                    describe_bytes(MAX_ROW_TEXT_BYTES)
                ));
                return;
            }
            self.sheet_text_bytes = self.sheet_text_bytes.saturating_add(length as u64);
            if self.bounded && self.sheet_text_bytes > MAX_SHEET_TEXT_BYTES {
                self.fail(anyhow!(
                    "the sheet holds more than {} of text by row {row_number}: no workbook sheet holds that much (one long value repeated in many cells?)",
                    describe_bytes(MAX_SHEET_TEXT_BYTES as usize)
                ));
                return;
            }
        }
        let row = self.current.get_or_insert_with(|| SheetRow {
            row_number,
            cells: Vec::new(),
            rejection: None,
        });
        let column = column_index as usize;
        if row.cells.len() <= column {
            row.cells.resize(column + 1, Data::Empty);
        }
        row.cells[column] = cell;
    }

    /// Whether a cell's text of `length` bytes is past [`MAX_CELL_TEXT_BYTES`] (then reading
    /// stops with that error).
    fn is_too_long(&mut self, (row_index, column_index): (u32, u32), length: usize) -> bool {
        if !self.bounded || length <= MAX_CELL_TEXT_BYTES {
            return false;
        }
        self.fail(cell_too_long(row_index, column_index, length));
        true
    }

    fn fail(&mut self, error: anyhow::Error) {
        self.current = None;
        self.stopped = true;
        self.error.get_or_insert(error);
    }

    /// Hands the row gathered so far to the visitor (rows holding only empty cells never get
    /// here: empty cells are not pushed).
    fn flush(&mut self) {
        self.current_text_bytes = 0;
        if let Some(row) = self.current.take()
            && !self.stopped
            && (self.visit)(row).is_break()
        {
            self.stopped = true;
        }
    }

    /// Flushes the last row; the error that stopped reading, if a limit did.
    fn finish(&mut self) -> anyhow::Result<()> {
        self.flush();
        match self.error.take() {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}

impl ods::CellSink for RowAssembler<'_> {
    fn cell(&mut self, position: (u32, u32), cell: Data) -> ControlFlow<()> {
        self.push_owned(position, cell);
        self.flow()
    }

    fn end_row(&mut self) -> ControlFlow<()> {
        self.flush();
        self.flow()
    }
}

impl RowAssembler<'_> {
    fn flow(&self) -> ControlFlow<()> {
        if self.stopped {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    }
}

/// The text a cell holds, for the text limits.
fn text_of(cell: &Data) -> Option<&str> {
    match cell {
        Data::String(text) | Data::DateTimeIso(text) | Data::DurationIso(text) => Some(text),
        _ => None,
    }
}

/// The error for a cell whose text is past [`MAX_CELL_TEXT_BYTES`].
pub(crate) fn cell_too_long(row_index: u32, column_index: u32, length: usize) -> anyhow::Error {
    anyhow!(
        "cell {} holds {length} bytes of text, more than the {} a workbook cell may hold (Excel's own limit is 32,767 characters)",
        cell_name(row_index, column_index),
        describe_bytes(MAX_CELL_TEXT_BYTES)
    )
}

/// A limit in bytes, as messages show it.
fn describe_bytes(bytes: usize) -> String {
    if bytes.is_multiple_of(1 << 30) {
        return format!("{} GiB", bytes >> 30);
    }
    match bytes {
        _ if bytes.is_multiple_of(1 << 20) => format!("{} MiB", bytes >> 20),
        _ if bytes.is_multiple_of(1 << 10) => format!("{} KiB", bytes >> 10),
        _ => format!("{bytes} bytes"),
    }
}

/// A cell's A1 name from 0-based indexes, for messages.
pub(crate) fn cell_name(row_index: u32, column_index: u32) -> String {
    let mut letters = Vec::new();
    let mut rest = u64::from(column_index) + 1;
    while rest > 0 {
        let digit = ((rest - 1) % 26) as u8;
        letters.push(char::from(b'A' + digit));
        rest = (rest - 1) / 26;
    }
    let column: String = letters.iter().rev().collect();
    format!("{column}{}", u64::from(row_index) + 1)
}

/// A non-empty cell as a reader hands it over, borrowing its text where the reader can
/// lend it (calamine's shared strings), so limits are checked before anything is copied.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum CellView<'a> {
    Text(&'a str),
    Int(i64),
    Float(f64),
    Bool(bool),
    DateTime(ExcelDateTime),
    DateTimeIso(&'a str),
    DurationIso(&'a str),
    Error(&'a CellErrorType),
}

impl<'a> CellView<'a> {
    /// The view of a calamine cell; `None` for an empty one.
    pub(crate) fn from_data(cell: &'a Data) -> Option<Self> {
        Some(match cell {
            Data::Empty => return None,
            Data::String(text) => Self::Text(text),
            Data::Int(value) => Self::Int(*value),
            Data::Float(value) => Self::Float(*value),
            Data::Bool(value) => Self::Bool(*value),
            Data::DateTime(value) => Self::DateTime(*value),
            Data::DateTimeIso(text) => Self::DateTimeIso(text),
            Data::DurationIso(text) => Self::DurationIso(text),
            Data::Error(error) => Self::Error(error),
        })
    }

    /// The view of a cell from calamine's streaming cell readers; `None` for an empty one.
    pub(crate) fn from_data_ref(cell: &'a DataRef<'_>) -> Option<Self> {
        Some(match cell {
            DataRef::Empty => return None,
            DataRef::SharedString(text) => Self::Text(text),
            DataRef::String(text) => Self::Text(text),
            DataRef::Int(value) => Self::Int(*value),
            DataRef::Float(value) => Self::Float(*value),
            DataRef::Bool(value) => Self::Bool(*value),
            DataRef::DateTime(value) => Self::DateTime(*value),
            DataRef::DateTimeIso(text) => Self::DateTimeIso(text),
            DataRef::DurationIso(text) => Self::DurationIso(text),
            DataRef::Error(error) => Self::Error(error),
        })
    }

    /// The text the cell holds, if it is a text-like cell.
    pub(crate) fn text(&self) -> Option<&'a str> {
        match *self {
            Self::Text(text) | Self::DateTimeIso(text) | Self::DurationIso(text) => Some(text),
            _ => None,
        }
    }

    /// The owned calamine cell.
    pub(crate) fn into_data(self) -> Data {
        match self {
            Self::Text(text) => Data::String(text.to_string()),
            Self::Int(value) => Data::Int(value),
            Self::Float(value) => Data::Float(value),
            Self::Bool(value) => Data::Bool(value),
            Self::DateTime(value) => Data::DateTime(value),
            Self::DateTimeIso(text) => Data::DateTimeIso(text.to_string()),
            Self::DurationIso(text) => Data::DurationIso(text.to_string()),
            Self::Error(error) => Data::Error(error.clone()),
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
        let mut rows = RowAssembler::new(header_row - 1, &mut visit);
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
                    rejection: None,
                },
                SheetRow {
                    row_number: 5,
                    cells: vec![Data::Empty, Data::Float(2.0)],
                    rejection: None,
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
    fn a_cell_or_row_past_the_text_limits_stops_reading_with_one_error() {
        let text = |length: usize| Data::String("x".repeat(length));
        // (label, cells, the error)
        let cases = [
            (
                "a cell of 1 MiB + 1 in the header",
                vec![((0, 1), text(MAX_CELL_TEXT_BYTES + 1))],
                "cell B1 holds 1048577 bytes of text, more than the 1 MiB a workbook cell may hold",
            ),
            (
                "a long cell in a data row",
                vec![((0, 0), text(2)), ((3, 2), text(5 << 20))],
                "cell C4 holds 5242880 bytes of text",
            ),
            (
                "17 cells of 1 MiB in one row",
                (0..17)
                    .map(|column| ((1, column), text(MAX_CELL_TEXT_BYTES)))
                    .collect(),
                "row 2 holds more than 16 MiB of text",
            ),
        ];
        for (label, cells, expected) in cases {
            let mut seen = 0;
            let mut visit = |_row: SheetRow| {
                seen += 1;
                ControlFlow::Continue(())
            };
            let mut rows = RowAssembler::new(0, &mut visit);
            for (position, cell) in cells {
                rows.push_owned(position, cell);
            }
            let message = format!("{:#}", rows.finish().expect_err(label));
            assert!(message.starts_with(expected), "{label}: {message}");
        }
        // a borrowed cell is measured before it is copied
        let long = "y".repeat(MAX_CELL_TEXT_BYTES + 1);
        let mut visit = |_row: SheetRow| ControlFlow::Continue(());
        let mut rows = RowAssembler::new(0, &mut visit);
        rows.push((0, 0), CellView::Text(&long));
        assert!(rows.stopped);
        assert!(rows.current.is_none());
        // CSV is bounded by its own reader, not here
        let mut visit = |_row: SheetRow| ControlFlow::Continue(());
        let mut rows = RowAssembler::new(0, &mut visit);
        rows.bounded = false;
        rows.push_owned((0, 0), text(MAX_CELL_TEXT_BYTES + 1));
        assert!(rows.finish().is_ok());
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
                csv: CsvOptions::default(),
                xlsx_reader: XlsxReader::Calamine,
                xls_reader: XlsReader::Calamine,
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
