//! The .xlsx/.xlsm reader of our own (the default; `--xlsx-reader calamine` keeps
//! calamine's): streams one worksheet out of the zip and hands each non-empty cell, with its
//! 0-based (row, column), to the caller as the same calamine [`Data`] calamine's cell reader
//! gives, so `convert` treats both alike. calamine stays its oracle in the differential
//! tests (tests/integration/xlsx_reader.rs).
//!
//! Why: reading a large .xlsx is where the time goes. The shared strings and the sheet are
//! inflated and parsed at the same time, with a zip handle each: the shared strings on one
//! thread (`strings`), the sheet inflated on a second and scanned (`sheet`) on a third, and
//! its shared strings resolved and its rows assembled and converted on the caller's; joined
//! by bounded channels and a condvar, never by a second pass. Both parts are scanned by a
//! scanner made for SpreadsheetML (`scan`, memchr over the few tags that matter, and a
//! one-pass path for the plain shapes writers emit: `<c r=".." t="s"><v>..</v></c>` and
//! `<si><t>..</t></si>`) rather than a general XML event parser; the shared strings live in
//! one arena; and a row is handed on as soon as the strings it references are parsed.
//!
//! What it covers: shared strings, inline strings (`t="inlineStr"`), `t="str"` formula
//! results, booleans, error cells, numbers, ISO date cells (`t="d"`), rich-text runs,
//! phonetic runs (ignored), `xml:space`, entities and numeric character references,
//! `_xHHHH_` escapes, cells and rows without an `r` attribute, namespace prefixes on
//! elements, the 1904 flag, dates from styles.xml number formats (built-in ids and custom
//! codes, decided as calamine decides), sheet lookup through workbook.xml and its
//! relationships (transitional and Strict OOXML), hidden sheets. Zip member names are matched
//! case-insensitively, as calamine does.
//!
//! What it refuses, with one error naming the file, sheet and cell: an encrypted workbook
//! (an OLE2 container), a missing part, malformed XML where a cell is expected, a cell whose
//! text is longer than [`MAX_CELL_TEXT_BYTES`], a row holding more than
//! [`MAX_ROW_TEXT_BYTES`] of text, a shared-string table of more than
//! [`strings::MAX_SHARED_STRINGS`] entries (only when a cell needs an entry past the limit).
//! Nothing a file claims (`count`, `uniqueCount`, `<dimension>`) sizes an allocation or a
//! loop; whitespace and skipped elements stream in constant memory.
//!
//! Deliberate differences from calamine: a shared-string index that is not a number is an
//! error (calamine reads it as entry 0); an error in a part of the shared-string table that
//! no cell uses is not fatal; the limits above; an unknown `state` of a sheet is ignored.
//! It does not assemble rows or skip rows: the parent module's `RowAssembler` does.

mod scan;
mod sheet;
mod strings;
mod styles;

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, anyhow, bail};
use quick_xml::Reader;
use quick_xml::events::{BytesStart, Event};
use tracing::warn;
use zip::ZipArchive;

use super::innermost_cause;
use crate::message::{quoted, quoted_value};
pub(crate) use sheet::SheetEvent;
use sheet::{Resolver, SheetContext, scan_sheet_cells};
use strings::{SharedStrings, parse_shared_strings};
pub(super) use styles::{
    CellFormat, builtin_format_by_id, detect_custom_number_format, number_cell,
};

/// Longest text one cell may hold, in UTF-8 bytes: Excel itself stops at 32,767
/// characters; other writers go further, and a cell past this is refused rather than held.
pub(crate) const MAX_CELL_TEXT_BYTES: usize = 1 << 20;

/// Most text one row may hold, in UTF-8 bytes, so that one long string referenced by every
/// cell of a row cannot be copied 16,384 times.
pub(crate) const MAX_ROW_TEXT_BYTES: usize = 64 << 20;

/// Most XML one cell or one shared string may span (entities and escapes make XML longer
/// than its text); a longer shared string is skipped in constant memory and refused when
/// used.
const MAX_ELEMENT_XML_BYTES: usize = 8 << 20;

/// Largest workbook part read whole (relationships, workbook.xml, styles.xml).
const MAX_METADATA_PART_BYTES: u64 = 64 << 20;

/// The first bytes of an OLE2 compound file: what an encrypted .xlsx is.
const OLE2_MAGIC: [u8; 8] = [0xD0, 0xCF, 0x11, 0xE0, 0xA1, 0xB1, 0x1A, 0xE1];

/// The uncached-formula warning is given once per process, however often a sheet is read.
static UNCACHED_FORMULAS_WARNED: AtomicBool = AtomicBool::new(false);

/// One sheet the workbook lists.
#[derive(Debug, Clone)]
struct SheetEntry {
    name: String,
    /// Zip member of the sheet part.
    part: String,
    is_worksheet: bool,
}

/// An open .xlsx/.xlsm package: sheet list, number formats and the 1904 flag read; each
/// sheet read streams its part again.
pub(crate) struct XlsxWorkbook {
    path: PathBuf,
    archive: ZipArchive<BufReader<File>>,
    /// Lowercased member name -> member name.
    members: HashMap<String, String>,
    sheets: Vec<SheetEntry>,
    formats: Vec<CellFormat>,
    is_1904: bool,
    shared_strings_part: Option<String>,
}

/// What reading a sheet found besides its cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SheetRead {
    /// 1-based last row the sheet's `<dimension>` claims: a hint, never trusted.
    pub(crate) declared_last_row: Option<u32>,
}

impl XlsxWorkbook {
    /// Opens the package and reads its relationships, workbook.xml and styles.xml.
    pub(crate) fn open(path: &Path) -> anyhow::Result<Self> {
        let unreadable = || {
            format!(
                "cannot open {}: not a readable workbook (corrupt or truncated?)",
                path.display()
            )
        };
        let mut file =
            File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let mut magic = [0; 8];
        if file.read_exact(&mut magic).is_ok() && magic == OLE2_MAGIC {
            bail!(
                "cannot open {}: it is password protected or not an .xlsx (an OLE2 container; save a copy without a password, as .xlsx)",
                path.display()
            );
        }
        let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let archive = ZipArchive::new(BufReader::new(file))
            .map_err(|error| anyhow!(innermost_cause(&error)))
            .with_context(unreadable)?;
        let members = archive
            .file_names()
            .flatten()
            .map(|name| {
                (
                    name.replace('\\', "/").to_ascii_lowercase(),
                    name.to_string(),
                )
            })
            .collect();
        let mut workbook = XlsxWorkbook {
            path: path.to_path_buf(),
            archive,
            members,
            sheets: Vec::new(),
            formats: Vec::new(),
            is_1904: false,
            shared_strings_part: None,
        };
        workbook.read_package().with_context(unreadable)?;
        Ok(workbook)
    }

    /// The sheet names in workbook order (hidden ones included), for `pick_sheet`.
    pub(crate) fn sheet_names(&self) -> Vec<String> {
        self.sheets.iter().map(|sheet| sheet.name.clone()).collect()
    }

    /// Streams the cells of sheet `sheet_name` to `visit`, and the end of each `<row>`,
    /// until the sheet ends or `visit` breaks.
    pub(crate) fn read_sheet(
        &mut self,
        sheet_name: &str,
        visit: &mut dyn FnMut(SheetEvent) -> ControlFlow<()>,
    ) -> anyhow::Result<SheetRead> {
        let context = || {
            format!(
                "cannot read sheet {} of {}",
                quoted(sheet_name),
                self.path.display()
            )
        };
        let entry = self
            .sheets
            .iter()
            .find(|sheet| sheet.name == sheet_name)
            .cloned()
            .with_context(|| {
                format!(
                    "sheet {} not found in {}",
                    quoted(sheet_name),
                    self.path.display()
                )
            })?;
        if !entry.is_worksheet {
            bail!(
                "{}: it is a chart or dialog sheet, not a worksheet",
                context()
            );
        }
        let member = self
            .member(&entry.part)
            .with_context(|| format!("{}: its part {} is missing", context(), quoted(&entry.part)))?
            .to_string();
        // the shared strings get their own zip handle, for their own thread
        let strings_archive = match self
            .shared_strings_part
            .as_deref()
            .and_then(|part| self.member(part))
        {
            Some(member) => {
                let file = File::open(&self.path)
                    .with_context(|| format!("cannot open {}", self.path.display()))?;
                let archive = ZipArchive::new(BufReader::new(file))
                    .map_err(|error| anyhow!(innermost_cause(&error)))
                    .with_context(context)?;
                Some((archive, member.to_string()))
            }
            None => None,
        };
        let strings = if strings_archive.is_some() {
            SharedStrings::default()
        } else {
            SharedStrings::empty()
        };
        let formats = std::mem::take(&mut self.formats);
        let sheet_context = SheetContext {
            formats: &formats,
            is_1904: self.is_1904,
            strings: &strings,
        };
        let archive = &mut self.archive;
        let outcome = std::thread::scope(|scope| {
            let parser = strings_archive.map(|(mut archive, member)| {
                let strings = &strings;
                std::thread::Builder::new()
                    .name("xlsx-strings".to_string())
                    .spawn_scoped(scope, move || match archive.by_name(&member) {
                        Ok(part) => parse_shared_strings(part, strings),
                        Err(error) => {
                            parse_shared_strings(FailingRead(innermost_cause(&error)), strings);
                        }
                    })
                    .inspect_err(|_| {
                        // no parser: no cell may wait for its entries
                        strings.finish(Some("the shared strings reader did not start".into()))
                    })
            });
            // the sheet is inflated on a thread of its own, a bounded channel of chunks ahead
            // of the scanner
            let (chunk_sender, chunk_receiver) =
                std::sync::mpsc::sync_channel(INFLATED_CHUNKS_AHEAD);
            // read chunks go back to the inflater, so their memory is reused, not reallocated
            let (spent_sender, spent_receiver) = std::sync::mpsc::sync_channel(INFLATED_CHUNK_POOL);
            let inflater = std::thread::Builder::new()
                .name("xlsx-inflate".to_string())
                .spawn_scoped(scope, || {
                    inflate_into(archive, &member, chunk_sender, spent_receiver)
                });
            let outcome = match inflater {
                Ok(inflater) => {
                    let chunks = ChunkRead::new(chunk_receiver, spent_sender);
                    let outcome = scan_and_resolve(scope, chunks, &sheet_context, visit);
                    // the receiver is gone: the inflater stops at its next chunk
                    if inflater.join().is_err() {
                        Err(anyhow!("the sheet inflater panicked"))
                    } else {
                        outcome
                    }
                }
                Err(error) => Err(anyhow!(error).context("cannot start the sheet inflater")),
            };
            strings.cancel();
            match parser.map(|spawned| spawned.map(|handle| handle.join().is_ok())) {
                Some(Ok(false)) => return Err(anyhow!("the shared strings reader panicked")),
                Some(Err(error)) => {
                    return Err(anyhow!(error).context("cannot start the shared strings reader"));
                }
                Some(Ok(true)) | None => {}
            }
            outcome
        });
        self.formats = formats;
        let outcome = outcome.with_context(context)?;
        if outcome.read_to_end
            && let Some(first) = outcome.first_uncached_formula
            && !UNCACHED_FORMULAS_WARNED.swap(true, Ordering::Relaxed)
        {
            warn!(
                "{} formula cells have no cached value and load as NULL (first: {sheet_name}!{}); open and save the file in a spreadsheet program to compute them",
                outcome.uncached_formula_count,
                sheet::cell_name(first)
            );
        }
        Ok(SheetRead {
            declared_last_row: outcome.declared_last_row,
        })
    }

    /// The zip member of `part`, matched case-insensitively.
    fn member(&self, part: &str) -> Option<&str> {
        self.members
            .get(&part.replace('\\', "/").to_ascii_lowercase())
            .map(String::as_str)
    }

    /// A reader of a small part, bounded to [`MAX_METADATA_PART_BYTES`]; `None` if absent.
    fn part_xml(&mut self, part: &str) -> anyhow::Result<Option<PartReader<'_>>> {
        let Some(member) = self.member(part).map(str::to_string) else {
            return Ok(None);
        };
        let file = self
            .archive
            .by_name(&member)
            .map_err(|error| anyhow!(innermost_cause(&error)))
            .with_context(|| format!("cannot read {}", quoted(part)))?;
        let mut reader = Reader::from_reader(BufReader::new(BoundedRead {
            inner: file,
            remaining: MAX_METADATA_PART_BYTES,
        }));
        let config = reader.config_mut();
        config.check_end_names = false;
        config.trim_text(false);
        config.check_comments = false;
        config.expand_empty_elements = true;
        Ok(Some(reader))
    }

    fn read_package(&mut self) -> anyhow::Result<()> {
        let document = self.read_office_document()?;
        let (directory, workbook_name) = match document.rfind('/') {
            Some(slash) => document.split_at(slash + 1),
            None => ("", document.as_str()),
        };
        let directory = directory.strip_prefix('/').unwrap_or(directory).to_string();
        let workbook_name = if workbook_name.is_empty() {
            "workbook.xml".to_string()
        } else {
            workbook_name.to_string()
        };
        let relationships_part = format!("{directory}_rels/{workbook_name}.rels");
        let relationships = self.read_relationships(&relationships_part)?;
        self.read_workbook(
            &format!("{directory}{workbook_name}"),
            &directory,
            &relationships,
        )?;
        self.read_styles(&format!("{directory}styles.xml"))?;
        self.shared_strings_part = Some(format!("{directory}sharedStrings.xml"));
        Ok(())
    }

    /// The target of the package's officeDocument relationship (`xl/workbook.xml`).
    fn read_office_document(&mut self) -> anyhow::Result<String> {
        let part = "_rels/.rels";
        let mut xml = self
            .part_xml(part)?
            .with_context(|| format!("{} is missing", quoted(part)))?;
        let mut buffer = Vec::new();
        loop {
            match xml
                .read_event_into(&mut buffer)
                .with_context(|| format!("cannot read {}", quoted(part)))?
            {
                Event::Start(element) if element.local_name().as_ref() == "Relationship" => {
                    let kind = attribute_value(&element, "Type")?;
                    if kind.is_some_and(|kind| kind.ends_with("/relationships/officeDocument"))
                        && let Some(target) = attribute_value(&element, "Target")?
                    {
                        return Ok(target);
                    }
                }
                Event::Eof => bail!("{} has no officeDocument relationship", quoted(part)),
                _ => {}
            }
            buffer.clear();
        }
    }

    /// Relationship id -> (target, type).
    fn read_relationships(
        &mut self,
        part: &str,
    ) -> anyhow::Result<HashMap<String, (String, String)>> {
        let mut xml = self
            .part_xml(part)?
            .with_context(|| format!("{} is missing", quoted(part)))?;
        let mut relationships = HashMap::new();
        let mut buffer = Vec::new();
        loop {
            match xml
                .read_event_into(&mut buffer)
                .with_context(|| format!("cannot read {}", quoted(part)))?
            {
                Event::Start(element) if element.local_name().as_ref() == "Relationship" => {
                    if let Some(id) = attribute_value(&element, "Id")? {
                        let target = attribute_value(&element, "Target")?.unwrap_or_default();
                        let kind = attribute_value(&element, "Type")?.unwrap_or_default();
                        relationships.insert(id, (target, kind));
                    }
                }
                Event::Eof => return Ok(relationships),
                _ => {}
            }
            buffer.clear();
        }
    }

    fn read_workbook(
        &mut self,
        part: &str,
        directory: &str,
        relationships: &HashMap<String, (String, String)>,
    ) -> anyhow::Result<()> {
        let mut xml = self
            .part_xml(part)?
            .with_context(|| format!("{} is missing", quoted(part)))?;
        let mut buffer = Vec::new();
        let mut sheets = Vec::new();
        let mut is_1904 = false;
        loop {
            match xml
                .read_event_into(&mut buffer)
                .with_context(|| format!("cannot read {}", quoted(part)))?
            {
                Event::Start(element) if element.local_name().as_ref() == "sheet" => {
                    let name = attribute_value(&element, "name")?.unwrap_or_default();
                    let mut relationship_id = None;
                    for attribute in element.attributes().with_checks(false) {
                        let attribute =
                            attribute.with_context(|| format!("cannot read {}", quoted(part)))?;
                        if attribute.key.local_name().as_ref() == "id" {
                            relationship_id = Some(attribute.value.into_owned());
                        }
                    }
                    let (target, kind) = relationship_id
                        .as_ref()
                        .and_then(|id| relationships.get(id))
                        .with_context(|| {
                            format!(
                                "sheet {} has no relationship in {}",
                                quoted(&name),
                                quoted(part)
                            )
                        })?;
                    let part = match target.strip_prefix('/') {
                        Some(absolute) => absolute.to_string(),
                        None => format!("{directory}{target}"),
                    };
                    let is_worksheet = match kind.rsplit('/').next() {
                        Some("worksheet") => true,
                        Some("chartsheet" | "dialogsheet") => false,
                        _ => bail!(
                            "sheet {} has an unknown relationship type {}",
                            quoted(&name),
                            quoted_value(kind)
                        ),
                    };
                    sheets.push(SheetEntry {
                        name,
                        part,
                        is_worksheet,
                    });
                }
                Event::Start(element) if element.local_name().as_ref() == "workbookPr" => {
                    if let Some(flag) = attribute_value(&element, "date1904")? {
                        is_1904 = flag == "1" || flag == "true";
                    }
                }
                Event::Eof => break,
                _ => {}
            }
            buffer.clear();
        }
        drop(xml);
        self.sheets = sheets;
        self.is_1904 = is_1904;
        Ok(())
    }

    /// The number format kind of every `<cellXfs>` entry, by style index.
    fn read_styles(&mut self, part: &str) -> anyhow::Result<()> {
        let Some(mut xml) = self.part_xml(part)? else {
            return Ok(());
        };
        let mut buffer = Vec::new();
        let mut custom: HashMap<String, CellFormat> = HashMap::new();
        let mut formats = Vec::new();
        let mut in_cell_formats = false;
        loop {
            match xml
                .read_event_into(&mut buffer)
                .with_context(|| format!("cannot read {}", quoted(part)))?
            {
                Event::Start(element) => match element.local_name().as_ref() {
                    "numFmt" => {
                        let id = raw_attribute(&element, "numFmtId");
                        let code = attribute_value(&element, "formatCode")?;
                        if let (Some(id), Some(code)) = (id, code) {
                            custom.insert(id, detect_custom_number_format(&code));
                        }
                    }
                    "cellXfs" => in_cell_formats = true,
                    "xf" if in_cell_formats => {
                        formats.push(match raw_attribute(&element, "numFmtId") {
                            Some(id) => custom
                                .get(&id)
                                .copied()
                                .unwrap_or_else(|| builtin_format_by_id(id.as_bytes())),
                            None => CellFormat::Other,
                        });
                        // an <xf> nests only <alignment> and <protection>, never another <xf>
                    }
                    _ => {}
                },
                Event::End(element) if element.local_name().as_ref() == "cellXfs" => {
                    in_cell_formats = false
                }
                Event::Eof => break,
                _ => {}
            }
            buffer.clear();
        }
        drop(xml);
        self.formats = formats;
        Ok(())
    }
}

/// A quick-xml reader over one small part of the package.
type PartReader<'a> = Reader<BufReader<BoundedRead<zip::read::ZipFile<'a, BufReader<File>>>>>;

/// An attribute's raw bytes.
fn raw_attribute(element: &BytesStart<'_>, name: &str) -> Option<String> {
    element
        .attributes()
        .with_checks(false)
        .flatten()
        .find(|attribute| attribute.key.as_ref() == name)
        .map(|attribute| attribute.value.into_owned())
}

/// An attribute's value with entities decoded, as calamine's `decode_attr`.
fn attribute_value(element: &BytesStart<'_>, name: &str) -> anyhow::Result<Option<String>> {
    let Some(text) = raw_attribute(element, name) else {
        return Ok(None);
    };
    let decoded = quick_xml::escape::unescape(&text).context("an attribute holds a bad entity")?;
    Ok(Some(decoded.into_owned()))
}

/// A reader that fails past `remaining` bytes: a metadata part that inflates to more is
/// refused instead of held.
struct BoundedRead<R> {
    inner: R,
    remaining: u64,
}

impl<R: Read> Read for BoundedRead<R> {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        let read = self.inner.read(buffer)?;
        self.remaining = self.remaining.checked_sub(read as u64).ok_or_else(|| {
            std::io::Error::other(format!(
                "the part inflates to more than {} MiB",
                MAX_METADATA_PART_BYTES >> 20
            ))
        })?;
        Ok(read)
    }
}

/// Scans the inflated sheet on a thread of its own and resolves its shared strings and
/// hands the cells to `visit` on the caller's, so that scanning the next rows and
/// assembling and converting these run at once; a bounded channel of batches between them.
fn scan_and_resolve<'scope>(
    scope: &'scope std::thread::Scope<'scope, '_>,
    chunks: ChunkRead,
    context: &'scope SheetContext<'scope>,
    visit: &mut dyn FnMut(SheetEvent) -> ControlFlow<()>,
) -> anyhow::Result<sheet::SheetOutcome> {
    let (batch_sender, batch_receiver) = std::sync::mpsc::sync_channel(SCANNED_BATCHES_AHEAD);
    // emptied batches go back to the scanner, so their memory is reused, not reallocated
    let (empty_sender, empty_receiver) = std::sync::mpsc::sync_channel(SCANNED_BATCHES_AHEAD + 1);
    let stop = Arc::new(AtomicBool::new(false));
    let scanner_stop = Arc::clone(&stop);
    let scanner = std::thread::Builder::new()
        .name("xlsx-sheet".to_string())
        .spawn_scoped(scope, move || {
            scan_sheet_cells(chunks, context, Some(&scanner_stop), &mut |batch| {
                let empty = empty_receiver
                    .try_recv()
                    .unwrap_or_else(|_| Vec::with_capacity(batch.capacity()));
                Ok(match batch_sender.send(std::mem::replace(batch, empty)) {
                    Ok(()) => ControlFlow::Continue(()),
                    // the resolver stopped: so does the scan
                    Err(_) => ControlFlow::Break(()),
                })
            })
        })
        .context("cannot start the sheet scanner")?;
    let mut resolver = Resolver::new(context.strings);
    let mut resolved = Ok(ControlFlow::Continue(()));
    for mut batch in &batch_receiver {
        resolved = resolver.resolve(&mut batch, visit);
        if !matches!(resolved, Ok(ControlFlow::Continue(()))) {
            break;
        }
        // the scanner may have enough already
        let _ = empty_sender.try_send(batch);
    }
    // the scanner stops at its next read or batch
    stop.store(true, Ordering::Relaxed);
    drop(batch_receiver);
    let (mut outcome, scanned) = scanner
        .join()
        .map_err(|_| anyhow!("the sheet scanner panicked"))?;
    // the scanner sends every complete row before its error: the resolver's error is of an
    // earlier cell, and a resolver that stopped never reached the scanner's
    if resolved?.is_break() {
        outcome.read_to_end = false;
        return Ok(outcome);
    }
    scanned?;
    Ok(outcome)
}

/// Batches of scanned cells the scanner may be ahead of the resolver.
const SCANNED_BATCHES_AHEAD: usize = 4;

/// Inflated chunks of the sheet part the inflater may be ahead of the scanner.
const INFLATED_CHUNKS_AHEAD: usize = 4;

/// Chunks in use at once: those queued, the one being filled, the one being read, and
/// one on its way back.
const INFLATED_CHUNK_POOL: usize = INFLATED_CHUNKS_AHEAD + 3;

/// Bytes of one inflated chunk.
const INFLATED_CHUNK_BYTES: usize = 256 * 1024;

/// Inflates zip member `member` into chunks sent to `sender`, until its end, an error
/// (sent on), or the receiver is gone; reuses the chunks `spent` gives back.
fn inflate_into(
    archive: &mut ZipArchive<BufReader<File>>,
    member: &str,
    sender: std::sync::mpsc::SyncSender<std::io::Result<Vec<u8>>>,
    spent: std::sync::mpsc::Receiver<Vec<u8>>,
) {
    let mut part = match archive.by_name(member) {
        Ok(part) => part,
        Err(error) => {
            let _ = sender.send(Err(std::io::Error::other(innermost_cause(&error))));
            return;
        }
    };
    let mut allocated = 0;
    loop {
        let mut chunk = match spent.try_recv() {
            Ok(chunk) => chunk,
            Err(_) if allocated < INFLATED_CHUNK_POOL => {
                allocated += 1;
                vec![0; INFLATED_CHUNK_BYTES]
            }
            Err(_) => match spent.recv() {
                Ok(chunk) => chunk,
                // the reader is gone
                Err(_) => return,
            },
        };
        // (a no-op: only the last chunk is ever shorter, and it is not reused)
        chunk.resize(INFLATED_CHUNK_BYTES, 0);
        let mut filled = 0;
        while filled < chunk.len() {
            match part.read(&mut chunk[filled..]) {
                Ok(0) => break,
                Ok(read) => filled += read,
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
                Err(error) => {
                    let _ = sender.send(Err(error));
                    return;
                }
            }
        }
        chunk.truncate(filled);
        if filled == 0 || sender.send(Ok(chunk)).is_err() {
            return;
        }
    }
}

/// The reading end of [`inflate_into`]'s channel, as a [`Read`]; gives read chunks back.
struct ChunkRead {
    receiver: std::sync::mpsc::Receiver<std::io::Result<Vec<u8>>>,
    spent: std::sync::mpsc::SyncSender<Vec<u8>>,
    chunk: Vec<u8>,
    offset: usize,
}

impl ChunkRead {
    fn new(
        receiver: std::sync::mpsc::Receiver<std::io::Result<Vec<u8>>>,
        spent: std::sync::mpsc::SyncSender<Vec<u8>>,
    ) -> Self {
        Self {
            receiver,
            spent,
            chunk: Vec::new(),
            offset: 0,
        }
    }
}

impl Read for ChunkRead {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        if self.offset == self.chunk.len() {
            match self.receiver.recv() {
                Ok(chunk) => {
                    let spent = std::mem::replace(&mut self.chunk, chunk?);
                    // (the first is the empty vector of `new`, no chunk of the pool)
                    if spent.capacity() != 0 {
                        // the inflater may have enough already
                        let _ = self.spent.try_send(spent);
                    }
                    self.offset = 0;
                }
                // the inflater is done: the end of the part
                Err(_) => return Ok(0),
            }
        }
        let available = &self.chunk[self.offset..];
        let count = available.len().min(buffer.len());
        buffer[..count].copy_from_slice(&available[..count]);
        self.offset += count;
        Ok(count)
    }
}

/// A reader that fails at once: a shared strings part that cannot be opened.
struct FailingRead(String);

impl Read for FailingRead {
    fn read(&mut self, _buffer: &mut [u8]) -> std::io::Result<usize> {
        Err(std::io::Error::other(self.0.clone()))
    }
}
