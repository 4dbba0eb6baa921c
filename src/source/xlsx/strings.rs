//! The shared-string table: parsed on its own thread while the sheet is read, kept in one
//! arena (the UTF-8 text of every entry back to back in 4 MiB blocks, which never move once
//! written, so the table grows without copying; and one `u32` end offset per entry), and
//! handed to the sheet reader as far as it is parsed.
//!
//! The parser publishes entries in batches under a mutex and wakes the sheet reader, which
//! waits only when a row references an entry not parsed yet: writers such as Excel and
//! xlsxwriter number the strings in order of first use, so rows flow from the start. Once the
//! table is complete the sheet reader takes it out of the mutex and reads it without locking.
//! A failure of this part (malformed XML, a table past its limits) is recorded with the count
//! of entries parsed before it, and matters only to a cell that needs an entry past that.

use std::borrow::Cow;
use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};

use super::scan::{
    ScanError, TagKind, XmlStream, decode_string_item, resumable_end_tag, trim_ascii_whitespace,
    unescape_excel,
};
use super::{MAX_CELL_TEXT_BYTES, MAX_ELEMENT_XML_BYTES};

/// Most entries the table holds; more is refused. Offsets cost 4 bytes an entry, so this
/// bounds them at 64 MiB whatever the part claims or repeats (every sheet of a 1M-row
/// export we know needs fewer than half of this).
pub(crate) const MAX_SHARED_STRINGS: usize = 1 << 24;

/// Entries the parser gathers before it publishes them.
const BATCH_ENTRIES: usize = 1024;

/// Text bytes the parser gathers before it publishes them.
const BATCH_BYTES: usize = 256 * 1024;

/// Bits of an entry's end offset that address bytes inside one block.
const BLOCK_BITS: u32 = 22;

/// Bytes of one arena block; an entry never spans two (the per-cell limit is smaller).
const BLOCK_BYTES: usize = 1 << BLOCK_BITS;

/// Blocks the `u32` offsets can address: 4 GiB of text.
const MAX_BLOCKS: usize = 1 << (32 - BLOCK_BITS);

const _: () = assert!(MAX_CELL_TEXT_BYTES < BLOCK_BYTES);

/// The parsed part of the table.
#[derive(Debug, Default)]
pub(super) struct Table {
    blocks: Vec<String>,
    /// End of each entry as (block << BLOCK_BITS) | offset in the block; an entry starts
    /// where the one before ends, or at the start of its block if that one is elsewhere.
    ends: Vec<u32>,
    /// Entries (ascending) whose text is over the per-cell limit: kept empty, refused when
    /// a cell uses them.
    oversized: Vec<u32>,
    /// The part was read to its end (or stopped on `failure`): no more entries come.
    complete: bool,
    /// Why the part stopped before its end.
    failure: Option<String>,
}

/// What a cell finds at a shared-string index.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Entry<'a> {
    Text(&'a str),
    /// The entry's text is longer than the per-cell limit.
    Oversized,
}

impl Table {
    /// Entries parsed so far.
    pub(super) fn len(&self) -> usize {
        self.ends.len()
    }

    /// Entry `index`, if parsed.
    pub(super) fn get(&self, index: u32) -> Option<Entry<'_>> {
        let position = index as usize;
        let end = *self.ends.get(position)?;
        if !self.oversized.is_empty() && self.oversized.binary_search(&index).is_ok() {
            return Some(Entry::Oversized);
        }
        let block = (end >> BLOCK_BITS) as usize;
        let mask = (1u32 << BLOCK_BITS) - 1;
        let start = match position.checked_sub(1).map(|before| self.ends[before]) {
            Some(before) if before >> BLOCK_BITS == end >> BLOCK_BITS => before & mask,
            _ => 0,
        };
        let text = self.blocks.get(block).map_or("", String::as_str);
        Some(Entry::Text(&text[start as usize..(end & mask) as usize]))
    }

    /// Appends one entry's text; the error says which limit it passes.
    fn push(&mut self, text: Option<&str>) -> Result<(), String> {
        if self.len() >= MAX_SHARED_STRINGS {
            return Err(format!(
                "the table has more than {MAX_SHARED_STRINGS} entries"
            ));
        }
        let length = text.map_or(0, str::len);
        if self
            .blocks
            .last()
            .is_none_or(|block| block.len() + length >= BLOCK_BYTES)
        {
            if self.blocks.len() >= MAX_BLOCKS {
                return Err("the table holds more than 4 GiB of text".to_string());
            }
            self.blocks.push(String::with_capacity(BLOCK_BYTES));
        }
        let block_index = self.blocks.len() - 1;
        let block = self.blocks.last_mut().expect("a block was just ensured");
        match text {
            Some(text) => block.push_str(text),
            None => self.oversized.push(self.ends.len() as u32),
        }
        self.ends
            .push(((block_index as u32) << BLOCK_BITS) | block.len() as u32);
        Ok(())
    }

    /// Why no entry `index` exists (the table is complete or failed and shorter).
    pub(super) fn missing(&self, index: u32) -> String {
        match &self.failure {
            Some(failure) => format!(
                "shared string {index} cannot be read: the shared strings part fails after entry {}: {failure}",
                self.len()
            ),
            None => format!(
                "shared string {index} does not exist (the table has {} entries)",
                self.len()
            ),
        }
    }
}

/// The table between the parser thread and the sheet reader.
#[derive(Debug, Default)]
pub(super) struct SharedStrings {
    table: Mutex<Table>,
    more: Condvar,
    /// Set by the sheet reader when it needs no more entries.
    cancel: AtomicBool,
}

/// Access to the table for the sheet reader: locked while the parser runs, owned after.
pub(super) enum TableAccess<'a> {
    Locked(MutexGuard<'a, Table>),
    Owned(&'a Table),
}

impl std::ops::Deref for TableAccess<'_> {
    type Target = Table;
    fn deref(&self) -> &Table {
        match self {
            TableAccess::Locked(guard) => guard,
            TableAccess::Owned(table) => table,
        }
    }
}

impl SharedStrings {
    /// A table with no part behind it: complete and empty.
    pub(super) fn empty() -> Self {
        let strings = Self::default();
        strings.lock().complete = true;
        strings
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        // a panic in the parser thread is reported by its join; the table stays usable
        self.table
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Tells the parser to stop.
    pub(super) fn cancel(&self) {
        self.cancel.store(true, Ordering::Relaxed);
    }

    /// Waits until entry `index` is parsed or the table is complete, then gives access to
    /// it. Once complete, the table moves into `owned` and is read without locking.
    pub(super) fn wait_for<'a>(
        &'a self,
        index: u32,
        owned: &'a mut Option<Table>,
    ) -> TableAccess<'a> {
        if owned.is_some() {
            return TableAccess::Owned(owned.as_ref().expect("checked above"));
        }
        let mut table = self.lock();
        while table.len() <= index as usize && !table.complete {
            table = self
                .more
                .wait(table)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        if table.complete {
            *owned = Some(std::mem::take(&mut *table));
            drop(table);
            return TableAccess::Owned(owned.as_ref().expect("just set"));
        }
        TableAccess::Locked(table)
    }

    fn publish(&self, batch: &mut Batch) -> Result<(), String> {
        let mut table = self.lock();
        let result = batch.append_to(&mut table);
        drop(table);
        self.more.notify_all();
        result
    }

    /// Publishes `texts` as the next entries, and completes the table if `complete`: what
    /// the parser thread does, for tests of the sheet reader.
    #[cfg(test)]
    pub(super) fn publish_for_test(&self, texts: &[&str], complete: bool) {
        let mut batch = Batch::default();
        for text in texts {
            batch.lengths.push(Some(text.len() as u32));
            batch.text.push_str(text);
        }
        self.publish(&mut batch).expect("test batches are small");
        if complete {
            self.finish(None);
        }
    }

    /// Marks the table complete: no more entries come (`failure` says why, if any).
    pub(super) fn finish(&self, failure: Option<String>) {
        let mut table = self.lock();
        if !table.complete {
            table.complete = true;
            table.failure = failure;
        }
        drop(table);
        self.more.notify_all();
    }
}

/// Marks the table complete when the parser ends in any way (a panic included), so the
/// sheet reader never waits for entries that will not come.
struct FinishOnDrop<'a>(&'a SharedStrings);

impl Drop for FinishOnDrop<'_> {
    fn drop(&mut self) {
        self.0
            .finish(Some("the shared strings reader stopped".to_string()));
    }
}

/// Entries parsed and not yet published.
#[derive(Default)]
struct Batch {
    text: String,
    /// Length of each entry's text, or `None` for an oversized entry.
    lengths: Vec<Option<u32>>,
}

impl Batch {
    fn append_to(&mut self, table: &mut Table) -> Result<(), String> {
        let mut cursor = 0;
        let mut result = Ok(());
        for length in self.lengths.drain(..) {
            let text = length.map(|length| {
                let text = &self.text[cursor..cursor + length as usize];
                cursor += length as usize;
                text
            });
            if result.is_ok() {
                result = table.push(text);
            }
        }
        self.text.clear();
        result
    }
}

/// Parses the shared strings part from `reader` into `strings` until its end, a failure,
/// or cancellation. Runs on its own thread.
pub(super) fn parse_shared_strings(reader: impl Read, strings: &SharedStrings) {
    let finish = FinishOnDrop(strings);
    let mut stream = XmlStream::new(reader, MAX_ELEMENT_XML_BYTES, Some(&strings.cancel));
    let mut batch = Batch::default();
    let outcome = parse_entries(&mut stream, strings, &mut batch);
    let failure = match outcome {
        Ok(()) | Err(ScanError::Cancelled) => strings.publish(&mut batch).err(),
        Err(error) => {
            let _ = strings.publish(&mut batch);
            Some(error.to_string())
        }
    };
    strings.finish(failure);
    std::mem::forget(finish);
}

fn parse_entries<R: Read>(
    stream: &mut XmlStream<'_, R>,
    strings: &SharedStrings,
    batch: &mut Batch,
) -> Result<(), ScanError> {
    let mut scratch = Vec::new();
    let mut item_text = Vec::new();
    loop {
        if let Some(consumed) = plain_string_item(stream.data(), batch, &mut item_text) {
            stream.consume(consumed?);
            if batch.lengths.len() >= BATCH_ENTRIES || batch.text.len() >= BATCH_BYTES {
                strings.publish(batch).map_err(ScanError::Refused)?;
            }
            continue;
        }
        let Some(tag) = stream.next_tag()? else {
            return Err(ScanError::Malformed("the part ends before </sst>"));
        };
        let data = stream.data();
        let local = tag.local_name(data);
        match (tag.kind, local) {
            (TagKind::Empty, b"si") => {
                stream.consume(tag.length);
                batch.lengths.push(Some(0));
            }
            (TagKind::Start, b"si") => {
                let qname = match tag.qname(data) {
                    b"si" => Cow::Borrowed(&b"si"[..]),
                    other => Cow::Owned(other.to_vec()),
                };
                let body_start = tag.length;
                let found = stream.read_until(resumable_end_tag(body_start, &qname));
                match found {
                    Ok(Some((body_end, after))) => {
                        item_text.clear();
                        decode_string_item(
                            &stream.data()[body_start..body_end],
                            &mut item_text,
                            &mut scratch,
                        )?;
                        let text = std::str::from_utf8(&item_text)
                            .map_err(|_| ScanError::Malformed("a shared string is not UTF-8"))?;
                        if text.len() > MAX_CELL_TEXT_BYTES {
                            batch.lengths.push(None);
                        } else {
                            batch.lengths.push(Some(text.len() as u32));
                            batch.text.push_str(text);
                        }
                        stream.consume(after);
                    }
                    Ok(None) => return Err(ScanError::Malformed("the part ends inside a <si>")),
                    Err(ScanError::TooLong) => {
                        // far longer than any cell may be: published as oversized at once (a
                        // row that needs it fails now), then skipped in constant memory
                        batch.lengths.push(None);
                        strings.publish(batch).map_err(ScanError::Refused)?;
                        if !stream.skip_past_end_tag(&qname)? {
                            return Err(ScanError::Malformed("the part ends inside a <si>"));
                        }
                    }
                    Err(error) => return Err(error),
                }
                if batch.lengths.len() >= BATCH_ENTRIES || batch.text.len() >= BATCH_BYTES {
                    strings.publish(batch).map_err(ScanError::Refused)?;
                }
            }
            (TagKind::End, b"sst") => return Ok(()),
            _ => stream.consume(tag.length),
        }
    }
}

/// Adds the string item at the start of `data` to `batch` when it has the plain shape
/// writers emit, `<si><t>text</t></si>` (or `<t xml:space="preserve">`) with no markup,
/// entity or carriage return in the text, and gives the bytes it spans; `None` for any
/// other shape, or an item not wholly in `data`, which the general decoder reads.
/// `unescaped` is a reusable buffer.
fn plain_string_item(
    data: &[u8],
    batch: &mut Batch,
    unescaped: &mut Vec<u8>,
) -> Option<Result<usize, ScanError>> {
    const PRESERVE: &[u8] = b" xml:space=\"preserve\">";
    let rest = data.strip_prefix(b"<si><t")?;
    let (rest, preserve) = match rest.strip_prefix(b">") {
        Some(rest) => (rest, false),
        None => (rest.strip_prefix(PRESERVE)?, true),
    };
    let length = memchr::memchr3(b'<', b'&', b'\r', rest)?;
    if !rest[length..].starts_with(b"</t></si>") {
        return None;
    }
    let raw = &rest[..length];
    let mut text = if preserve {
        raw
    } else {
        trim_ascii_whitespace(raw)
    };
    if memchr::memchr(b'_', text).is_some() {
        unescaped.clear();
        unescape_excel(text, unescaped);
        text = unescaped;
    }
    let Ok(text) = std::str::from_utf8(text) else {
        return Some(Err(ScanError::Malformed("a shared string is not UTF-8")));
    };
    if text.len() > MAX_CELL_TEXT_BYTES {
        batch.lengths.push(None);
    } else {
        batch.lengths.push(Some(text.len() as u32));
        batch.text.push_str(text);
    }
    let tag_length = if preserve { 6 + PRESERVE.len() } else { 7 };
    Some(Ok(tag_length + length + "</t></si>".len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(xml: &str) -> Table {
        let strings = SharedStrings::default();
        parse_shared_strings(xml.as_bytes(), &strings);
        strings.table.into_inner().unwrap()
    }

    #[test]
    fn plain_items_read_as_the_general_decoder_reads_them() {
        // each item as the one-pass path takes it, and the same text in a shape it leaves
        // to the general decoder (a comment inside the <t>)
        for (item, expected) in [
            ("<t>plain</t>", "plain"),
            ("<t>  trimmed\t</t>", "trimmed"),
            ("<t xml:space=\"preserve\">  kept </t>", "  kept "),
            ("<t>a_x000D_b</t>", "a\rb"),
            ("<t>caf\u{e9}</t>", "caf\u{e9}"),
            ("<t></t>", ""),
        ] {
            let general = item.replacen("</t>", "<!-- -->", 1) + "</t>";
            for xml in [item.to_string(), general] {
                let table = parse(&format!("<sst><si>{xml}</si><si><t>next</t></si></sst>"));
                assert_eq!(table.failure, None, "{xml}");
                assert_eq!(table.get(0), Some(Entry::Text(expected)), "{xml}");
                assert_eq!(table.get(1), Some(Entry::Text("next")), "{xml}");
            }
        }
        let table = parse("<sst><si><t>\u{ff}</t></si></sst>");
        assert_eq!(table.get(0), Some(Entry::Text("\u{ff}")));
    }

    #[test]
    fn entries_are_kept_in_one_arena_in_order() {
        let table = parse(
            "<?xml version=\"1.0\"?><sst count=\"4294967295\" uniqueCount=\"4294967295\"><si><t>a</t></si><si/>\
             <si><r><t>b</t></r><r><t>c</t></r></si></sst>",
        );
        assert!(table.complete);
        assert_eq!(table.failure, None);
        assert_eq!(table.len(), 3);
        assert_eq!(table.get(0), Some(Entry::Text("a")));
        assert_eq!(table.get(1), Some(Entry::Text("")));
        assert_eq!(table.get(2), Some(Entry::Text("bc")));
        assert_eq!(table.get(3), None);
    }

    #[test]
    fn an_oversized_entry_is_marked_and_the_next_ones_still_read() {
        let long = "x".repeat(MAX_CELL_TEXT_BYTES + 1);
        let table = parse(&format!(
            "<sst><si><t>{long}</t></si><si><t>after</t></si></sst>"
        ));
        assert_eq!(table.get(0), Some(Entry::Oversized));
        assert_eq!(table.get(1), Some(Entry::Text("after")));
        assert!(table.blocks.iter().map(String::len).sum::<usize>() < 16);
    }

    #[test]
    fn entries_past_a_block_start_a_new_block_and_still_read_whole() {
        let table = SharedStrings::default();
        let long = "y".repeat(MAX_CELL_TEXT_BYTES);
        let texts: Vec<&str> = std::iter::repeat_n(long.as_str(), 5)
            .chain(["", "tail"])
            .collect();
        table.publish_for_test(&texts, true);
        let table = table.table.into_inner().unwrap();
        assert_eq!(table.blocks.len(), 2);
        for index in 0..5 {
            assert_eq!(
                table.get(index),
                Some(Entry::Text(long.as_str())),
                "{index}"
            );
        }
        assert_eq!(table.get(5), Some(Entry::Text("")));
        assert_eq!(table.get(6), Some(Entry::Text("tail")));
    }

    #[test]
    fn a_truncated_part_keeps_what_it_read_and_says_why_it_stopped() {
        let table = parse("<sst><si><t>a</t></si><si><t>b");
        assert_eq!(table.len(), 1);
        assert!(
            table.missing(1).contains("ends inside a <si>"),
            "{}",
            table.missing(1)
        );
    }
}
