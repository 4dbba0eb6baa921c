//! The .xls reader of our own (the default; `--xls-reader calamine` keeps calamine's, in
//! its contained child process): opens the Compound File with the `cfb` crate, reads the
//! `Workbook` stream record by record through one reused buffer, and hands each non-empty
//! cell of the chosen sheet, with its 0-based (row, column), to the caller as the same
//! calamine [`Data`](calamine::Data) calamine's reader gives, so `convert` treats both
//! alike. calamine stays its oracle in the differential tests (tests/integration/xls_reader.rs).
//!
//! Why: calamine materialises an .xls sheet as a dense grid (and copies it), so one cell
//! at the far corner of a 49 KB file costs a gigabyte. Here nothing is sized by the file:
//! memory is the workbook stream's shared strings (at most what the stream holds), one
//! record, and one row of cells.
//!
//! What it covers (BIFF8, Excel 97 to 2003, and what LibreOffice and xlwt write): the
//! globals (BOF, FILEPASS, DATEMODE for the 1904 epoch, FORMAT and XF for date detection
//! with the same rules as the .xlsx reader, BOUNDSHEET8 for the sheets and their offsets,
//! SST with strings split across CONTINUE records, the high-byte flag re-read at each
//! split, rich-text runs and phonetic data skipped) and a sheet's cells: LABELSST, LABEL,
//! RSTRING, NUMBER, RK, MULRK, BOOLERR (booleans and error codes), FORMULA with its cached
//! result (number, string from the STRING record after it, boolean, error, empty). BLANK
//! and MULBLANK are empty cells; ROW, DIMENSIONS, DBCELL and INDEX are never read, so what
//! they claim sizes nothing. Embedded substreams (charts) inside a sheet are skipped.
//!
//! Cells out of row order are legal in BIFF: a first pass over the sheet's records checks
//! the order (positions only); a sheet in order (what every writer produces) is streamed
//! row by row, one out of order is gathered (at most [`sheet::MAX_UNORDERED_CELLS`] cells,
//! shared strings as indexes) and sorted first.
//!
//! What it refuses, with one error naming the file (and sheet and record): an encrypted
//! workbook (FILEPASS), a stream that ends inside a record, a record too short for what it
//! must hold, a shared-string index past the table, an unknown error code. A file older
//! than BIFF8 (Excel 5/95 and before: 8-bit strings in the CODEPAGE, no SST) is not read
//! here: [`XlsWorkbook::open`] says so and the caller hands it to calamine.
//!
//! Deliberate differences from calamine: every FILEPASS is refused (calamine reads an
//! XOR-obfuscated file as if it were plain); a shared-string index past the table is an
//! error (calamine drops the cell); a STRING record with no string formula before it is
//! ignored (calamine puts it at the last formula's cell); strings that go on in a CONTINUE
//! record are read whole (calamine cuts them at the record's end). Rows are assembled by
//! the parent module's `RowAssembler`, like every format's.

mod records;
mod sheet;

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};

use super::CellEmitter;
use super::xlsx::{CellFormat, builtin_format_by_id, detect_custom_number_format};
use crate::message::shown_path;
use records::{Cursor, Records};

/// The stream reader under the records.
type Stream = BufReader<cfb::Stream<ByteOrderMarkIgnored>>;

/// Bytes of the stream reader's buffer.
const STREAM_BUFFER_BYTES: usize = 64 * 1024;

/// Longest joined record (with its CONTINUEs) other than the SST: a LABEL of 32,767
/// UTF-16 characters is 64 KiB, a FORMAT far less.
const MAX_RECORD_BYTES: usize = 1 << 20;

const BOF: u16 = 0x0809;
const EOF: u16 = 0x000A;
const FILEPASS: u16 = 0x002F;
const DATEMODE: u16 = 0x0022;
const FORMAT: u16 = 0x041E;
const XF: u16 = 0x00E0;
const BOUNDSHEET: u16 = 0x0085;
const SST: u16 = 0x00FC;

/// The BOF records of BIFF2, BIFF3 and BIFF4.
const OLDER_BOFS: [u16; 3] = [0x0009, 0x0209, 0x0409];

/// The BIFF8 version in a BOF record.
const BIFF8_VERSION: u16 = 0x0600;

/// One sheet of the workbook.
#[derive(Debug, Clone)]
struct SheetEntry {
    name: String,
    /// Stream offset of the sheet's BOF record.
    offset: u64,
}

/// The shared-string table: every string in one arena, found by its end offset.
#[derive(Debug, Default)]
pub(super) struct SharedStrings {
    text: String,
    ends: Vec<usize>,
    /// Why the table ends early, when it does: a cell that needs a later entry fails with it.
    broken: Option<String>,
}

impl SharedStrings {
    /// Entry `index`, or why there is none.
    pub(super) fn get(&self, index: u32) -> anyhow::Result<&str> {
        let index = index as usize;
        match self.ends.get(index) {
            Some(end) => {
                let start = match index {
                    0 => 0,
                    _ => self.ends[index - 1],
                };
                Ok(&self.text[start..*end])
            }
            None => match &self.broken {
                Some(reason) => Err(anyhow!(
                    "its shared string {index} cannot be read: the shared-string table is broken after entry {} ({reason})",
                    self.ends.len()
                )),
                None => Err(anyhow!(
                    "its shared string {index} is past the end of the table ({} entries)",
                    self.ends.len()
                )),
            },
        }
    }
}

/// What the sheets need from the workbook globals.
pub(super) struct Globals {
    /// The number format kind of every XF record, by XF index.
    pub(super) formats: Vec<CellFormat>,
    pub(super) is_1904: bool,
    pub(super) strings: SharedStrings,
}

/// An open BIFF8 workbook: globals read, each sheet read streams its records.
pub(crate) struct XlsWorkbook {
    path: PathBuf,
    /// The stream reads through it: it must outlive `records`.
    _container: cfb::CompoundFile<ByteOrderMarkIgnored>,
    records: Records<Stream>,
    sheets: Vec<SheetEntry>,
    globals: Globals,
}

/// What [`XlsWorkbook::open`] found.
pub(crate) enum Opened {
    Biff8(Box<XlsWorkbook>),
    /// A BIFF version before BIFF8 (its BOF version field), for calamine to read.
    OlderBiff(u16),
}

impl XlsWorkbook {
    /// Opens the compound file and reads the workbook globals.
    pub(crate) fn open(path: &Path) -> anyhow::Result<Opened> {
        let unreadable = || {
            format!(
                "cannot open {}: not a readable workbook (corrupt or truncated?)",
                shown_path(path)
            )
        };
        let file = File::open(path).with_context(|| format!("cannot open {}", shown_path(path)))?;
        let mut container = cfb::CompoundFile::open(ByteOrderMarkIgnored::new(file))
            .map_err(|error| anyhow!(crate::message::shown(&error.to_string())))
            .with_context(unreadable)?;
        let stream = ["/Workbook", "/Book"]
            .iter()
            .find(|name| container.is_stream(name))
            .with_context(|| format!("{}: it has no Workbook stream", unreadable()))?;
        let stream = container
            .open_stream(stream)
            .map_err(|error| anyhow!(crate::message::shown(&error.to_string())))
            .with_context(unreadable)?;
        let mut records = Records::new(BufReader::with_capacity(STREAM_BUFFER_BYTES, stream));
        let (sheets, globals) = match read_globals(&mut records, path).with_context(unreadable)? {
            GlobalsRead::Biff8(sheets, globals) => (sheets, globals),
            GlobalsRead::OlderBiff(version) => return Ok(Opened::OlderBiff(version)),
        };
        Ok(Opened::Biff8(Box::new(XlsWorkbook {
            path: path.to_path_buf(),
            _container: container,
            records,
            sheets,
            globals,
        })))
    }

    /// The sheet names in workbook order (hidden ones included), for `pick_sheet`.
    pub(crate) fn sheet_names(&self) -> Vec<String> {
        self.sheets.iter().map(|sheet| sheet.name.clone()).collect()
    }

    /// Streams the non-empty cells of sheet `sheet_name` to `emit` in row-major order,
    /// until the sheet ends or `emit` breaks.
    pub(crate) fn read_sheet(
        &mut self,
        sheet_name: &str,
        emit: &mut CellEmitter<'_>,
    ) -> anyhow::Result<()> {
        let context = || {
            format!(
                "cannot read sheet {} of {}",
                crate::message::quoted(sheet_name),
                shown_path(&self.path)
            )
        };
        let offset = self
            .sheets
            .iter()
            .find(|sheet| sheet.name == sheet_name)
            .map(|sheet| sheet.offset)
            .with_context(|| {
                format!(
                    "sheet {} not found in {}",
                    crate::message::quoted(sheet_name),
                    shown_path(&self.path)
                )
            })?;
        sheet::read_cells(&mut self.records, offset, &self.globals, emit).with_context(context)
    }
}

/// Offset of the compound file header's byte-order mark.
const BYTE_ORDER_MARK_AT: u64 = 28;

/// The byte-order mark every compound file holds (0xFFFE, little-endian).
const BYTE_ORDER_MARK: [u8; 2] = [0xFE, 0xFF];

/// The file under the compound-file reader, its header's byte-order mark always read as
/// the one the format defines. Some writers put it byte-swapped; the format is
/// little-endian whatever the mark says, and Excel, LibreOffice and calamine open such
/// files, while the `cfb` crate refuses them.
struct ByteOrderMarkIgnored {
    file: File,
    /// Offset of the next byte `file` gives.
    position: u64,
}

impl ByteOrderMarkIgnored {
    fn new(file: File) -> Self {
        Self { file, position: 0 }
    }
}

impl Read for ByteOrderMarkIgnored {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let read = self.file.read(buf)?;
        let start = self.position;
        self.position += read as u64;
        for (index, byte) in BYTE_ORDER_MARK.iter().enumerate() {
            let offset = BYTE_ORDER_MARK_AT + index as u64;
            if (start..self.position).contains(&offset) {
                buf[(offset - start) as usize] = *byte;
            }
        }
        Ok(read)
    }
}

impl Seek for ByteOrderMarkIgnored {
    fn seek(&mut self, position: SeekFrom) -> std::io::Result<u64> {
        self.position = self.file.seek(position)?;
        Ok(self.position)
    }
}

/// What the globals substream holds.
enum GlobalsRead {
    Biff8(Vec<SheetEntry>, Globals),
    OlderBiff(u16),
}

/// Reads the globals substream: from the first BOF to its EOF.
fn read_globals(records: &mut Records<Stream>, path: &Path) -> anyhow::Result<GlobalsRead> {
    let keep = |kind| {
        matches!(
            kind,
            BOF | EOF | FILEPASS | DATEMODE | FORMAT | XF | BOUNDSHEET | SST
        ) || OLDER_BOFS.contains(&kind)
    };
    // the SST is bounded by the stream itself: what it holds is really there
    let max_bytes = |kind| match kind {
        SST => usize::MAX,
        _ => MAX_RECORD_BYTES,
    };
    let mut sheets = Vec::new();
    let mut custom_formats: Vec<(u16, CellFormat)> = Vec::new();
    let mut xf_format_ids: Vec<u16> = Vec::new();
    let mut is_1904 = false;
    let mut strings = SharedStrings::default();
    let mut text = String::new();
    let mut units = Vec::new();
    let mut seen_bof = false;
    while records.next(keep, max_bytes)?.is_some() {
        let record = records.current();
        let at = |name: &str| format!("bad {name} record");
        let mut cursor = Cursor::new(&record, 0);
        match record.kind {
            kind if OLDER_BOFS.contains(&kind) && !seen_bof => {
                return Ok(GlobalsRead::OlderBiff(kind));
            }
            BOF => {
                if seen_bof {
                    continue;
                }
                seen_bof = true;
                let version = cursor.u16().with_context(|| at("BOF"))?;
                let substream = cursor.u16().unwrap_or(0);
                match version {
                    BIFF8_VERSION => {}
                    0 if substream != 0x1000 => {}
                    // BIFF2-4 (0x0200..0x0400, 0x0002, 0x0007) and BIFF5 (0x0500)
                    0x0002 | 0x0007 | 0x0200 | 0x0300 | 0x0400 | 0x0500 | 0 => {
                        return Ok(GlobalsRead::OlderBiff(version));
                    }
                    _ => {}
                }
            }
            _ if !seen_bof => bail!("the workbook stream does not start with a BOF record"),
            FILEPASS => bail!(
                "{} is encrypted (password protected); save a copy without a password",
                shown_path(path)
            ),
            DATEMODE => is_1904 = cursor.u16().with_context(|| at("DATEMODE"))? == 1,
            FORMAT => {
                let id = cursor.u16().with_context(|| at("FORMAT"))?;
                // the ids calamine takes a custom code for; others keep their built-in meaning
                if matches!(id, 5..=8 | 23..=26 | 41..=44 | 63..=66 | 164..=382) {
                    text.clear();
                    cursor
                        .unicode_string_as_held(&mut text, &mut units)
                        .with_context(|| at("FORMAT"))?;
                    custom_formats.push((id, detect_custom_number_format(&text)));
                }
            }
            XF => {
                cursor.skip(2).with_context(|| at("XF"))?;
                xf_format_ids.push(cursor.u16().with_context(|| at("XF"))?);
            }
            BOUNDSHEET => {
                let offset = cursor.u32().with_context(|| at("BOUNDSHEET8"))?;
                cursor.skip(2).with_context(|| at("BOUNDSHEET8"))?;
                let mut name = String::new();
                cursor
                    .short_unicode_string(&mut name, &mut units)
                    .with_context(|| at("BOUNDSHEET8"))?;
                name.retain(|character| character != '\0');
                sheets.push(SheetEntry {
                    name,
                    offset: u64::from(offset),
                });
            }
            SST => read_shared_strings(&mut cursor, &mut strings, &mut units),
            EOF => break,
            _ => {}
        }
    }
    if !seen_bof {
        bail!("the workbook stream is empty");
    }
    let formats = xf_format_ids
        .iter()
        .map(|id| {
            custom_formats
                .iter()
                .rev()
                .find(|(custom_id, _)| custom_id == id)
                .map(|(_, format)| *format)
                .unwrap_or_else(|| builtin_format_by_id(id.to_string().as_bytes()))
        })
        .collect();
    Ok(GlobalsRead::Biff8(
        sheets,
        Globals {
            formats,
            is_1904,
            strings,
        },
    ))
}

/// Reads the SST's strings (after its two counts, which are never trusted) into
/// `strings`; a string that cannot be read ends the table there, with the reason kept.
fn read_shared_strings(cursor: &mut Cursor<'_>, strings: &mut SharedStrings, units: &mut Vec<u16>) {
    if let Err(error) = cursor.skip(8) {
        strings.broken = Some(format!("{error:#}"));
        return;
    }
    let mut entry = String::new();
    while !cursor.is_at_end() {
        entry.clear();
        if let Err(error) = cursor.rich_extended_string(&mut entry, units) {
            strings.broken = Some(format!("{error:#}"));
            return;
        }
        strings.text.push_str(&entry);
        strings.ends.push(strings.text.len());
    }
}
