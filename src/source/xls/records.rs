//! The BIFF record layer: reads the workbook stream one record at a time through one
//! reused buffer, joins a record's CONTINUE records to it (remembering where each one
//! starts, since a string split there re-reads its high-byte flag), and decodes BIFF8
//! strings out of such a joined record. It knows no record's meaning: `globals` and
//! `sheet` decide which records they keep.

use std::io::{ErrorKind, Read, Seek, SeekFrom};

use anyhow::{Context, bail};

/// CONTINUE: more of the record before it.
pub(super) const CONTINUE: u16 = 0x003C;

/// A record with its CONTINUE records joined on: `body` and where each continuation starts.
pub(super) struct Record<'a> {
    pub(super) kind: u16,
    pub(super) body: &'a [u8],
    /// Offsets into `body` where a CONTINUE record's data starts, ascending.
    pub(super) boundaries: &'a [usize],
}

/// Reads records from a BIFF stream; the records a caller does not keep are skipped
/// without being held, whatever their length.
pub(super) struct Records<R> {
    stream: R,
    /// The header of the next record, read ahead to see whether it is a CONTINUE.
    peeked: Option<(u16, u16)>,
    kind: u16,
    body: Vec<u8>,
    boundaries: Vec<usize>,
    /// Stream offset of the next byte `stream` gives (after `peeked`).
    position: u64,
}

impl<R: Read + Seek> Records<R> {
    pub(super) fn new(stream: R) -> Self {
        Self {
            stream,
            peeked: None,
            kind: 0,
            body: Vec::new(),
            boundaries: Vec::new(),
            position: 0,
        }
    }

    /// Goes to stream offset `offset` (a sheet's BOF, from BOUNDSHEET8).
    pub(super) fn seek(&mut self, offset: u64) -> anyhow::Result<()> {
        self.stream
            .seek(SeekFrom::Start(offset))
            .context("cannot seek in the workbook stream")?;
        self.position = offset;
        self.peeked = None;
        Ok(())
    }

    /// Reads the next record whose kind `keep` accepts, with its continuations joined, up
    /// to `max_bytes(kind)` bytes, and gives its kind ([`Records::current`] holds it);
    /// `None` at the end of the stream.
    pub(super) fn next(
        &mut self,
        keep: impl Fn(u16) -> bool,
        max_bytes: impl Fn(u16) -> usize,
    ) -> anyhow::Result<Option<u16>> {
        loop {
            let Some((kind, length)) = self.header()? else {
                return Ok(None);
            };
            if !keep(kind) || kind == CONTINUE {
                self.skip(length)?;
                continue;
            }
            let limit = max_bytes(kind);
            self.body.clear();
            self.boundaries.clear();
            self.append(length, limit, kind)?;
            while let Some((CONTINUE, length)) = self.peek()? {
                self.peeked = None;
                self.boundaries.push(self.body.len());
                self.append(length, limit, kind)?;
            }
            self.kind = kind;
            return Ok(Some(kind));
        }
    }

    /// The record [`Records::next`] read last.
    pub(super) fn current(&self) -> Record<'_> {
        Record {
            kind: self.kind,
            body: &self.body,
            boundaries: &self.boundaries,
        }
    }

    fn header(&mut self) -> anyhow::Result<Option<(u16, u16)>> {
        self.peek()?;
        Ok(self.peeked.take())
    }

    fn peek(&mut self) -> anyhow::Result<Option<(u16, u16)>> {
        if self.peeked.is_none() {
            let mut header = [0; 4];
            let mut filled = 0;
            while filled < header.len() {
                match self.stream.read(&mut header[filled..]) {
                    Ok(0) => break,
                    Ok(read) => filled += read,
                    Err(error) if error.kind() == ErrorKind::Interrupted => {}
                    Err(error) => return Err(error).context("cannot read the workbook stream"),
                }
            }
            match filled {
                0 => return Ok(None),
                4 => {}
                _ => bail!(
                    "the workbook stream ends inside a record header (at byte {})",
                    self.position
                ),
            }
            self.position += 4;
            self.peeked = Some((
                u16::from_le_bytes([header[0], header[1]]),
                u16::from_le_bytes([header[2], header[3]]),
            ));
        }
        Ok(self.peeked)
    }

    fn append(&mut self, length: u16, limit: usize, kind: u16) -> anyhow::Result<()> {
        let length = usize::from(length);
        if self.body.len() + length > limit {
            bail!(
                "record 0x{kind:04X} at byte {} is longer than the {limit} bytes such a record may hold",
                self.position
            );
        }
        let start = self.body.len();
        self.body.resize(start + length, 0);
        self.stream
            .read_exact(&mut self.body[start..])
            .with_context(|| {
                format!(
                    "the workbook stream ends inside record 0x{kind:04X} (at byte {})",
                    self.position
                )
            })?;
        self.position += length as u64;
        Ok(())
    }

    fn skip(&mut self, length: u16) -> anyhow::Result<()> {
        let length = u64::from(length);
        let skipped = std::io::copy(&mut (&mut self.stream).take(length), &mut std::io::sink())
            .context("cannot read the workbook stream")?;
        if skipped < length {
            bail!(
                "the workbook stream ends inside a record (at byte {})",
                self.position + skipped
            );
        }
        self.position += length;
        Ok(())
    }
}

/// A reading position in a joined record.
pub(super) struct Cursor<'a> {
    body: &'a [u8],
    boundaries: &'a [usize],
    offset: usize,
}

impl<'a> Cursor<'a> {
    pub(super) fn new(record: &Record<'a>, offset: usize) -> Self {
        Self {
            body: record.body,
            boundaries: record.boundaries,
            offset: offset.min(record.body.len()),
        }
    }

    pub(super) fn is_at_end(&self) -> bool {
        self.offset >= self.body.len()
    }

    /// `count` raw bytes, across continuations as they are.
    pub(super) fn bytes(&mut self, count: usize) -> anyhow::Result<&'a [u8]> {
        let end = self
            .offset
            .checked_add(count)
            .filter(|end| *end <= self.body.len())
            .context("the record ends inside a value")?;
        let bytes = &self.body[self.offset..end];
        self.offset = end;
        Ok(bytes)
    }

    pub(super) fn u8(&mut self) -> anyhow::Result<u8> {
        Ok(self.bytes(1)?[0])
    }

    pub(super) fn u16(&mut self) -> anyhow::Result<u16> {
        let bytes = self.bytes(2)?;
        Ok(u16::from_le_bytes([bytes[0], bytes[1]]))
    }

    pub(super) fn u32(&mut self) -> anyhow::Result<u32> {
        let bytes = self.bytes(4)?;
        Ok(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    /// Skips `count` bytes (rich-text runs, phonetic data): they carry no flag at a
    /// continuation.
    pub(super) fn skip(&mut self, count: usize) -> anyhow::Result<()> {
        self.bytes(count).map(|_| ())
    }

    /// The end of the continuation segment the cursor is in.
    fn segment_end(&self) -> usize {
        // binary search: an SST of many megabytes has thousands of continuations
        let next = self
            .boundaries
            .partition_point(|boundary| *boundary <= self.offset);
        self.boundaries
            .get(next)
            .copied()
            .unwrap_or(self.body.len())
    }

    fn is_at_boundary(&self) -> bool {
        self.offset > 0 && self.boundaries.binary_search(&self.offset).is_ok()
    }

    /// `char_count` characters of BIFF8 string data appended to `text`: one byte each
    /// (Latin-1) while `high_byte` is clear, else UTF-16LE; a continuation that starts
    /// inside the characters begins with a fresh flag byte.
    pub(super) fn chars(
        &mut self,
        char_count: usize,
        high_byte: bool,
        text: &mut String,
        units: &mut Vec<u16>,
    ) -> anyhow::Result<()> {
        self.chars_within(char_count, high_byte, text, units, false)
    }

    /// As [`Cursor::chars`]; when `cut_short_is_read`, a record that ends before
    /// `char_count` characters gives the characters it holds instead of an error.
    fn chars_within(
        &mut self,
        char_count: usize,
        mut high_byte: bool,
        text: &mut String,
        units: &mut Vec<u16>,
        cut_short_is_read: bool,
    ) -> anyhow::Result<()> {
        units.clear();
        let mut remaining = char_count;
        while remaining > 0 {
            // characters that go on in a continuation start it with a fresh flag byte; a
            // continuation may hold nothing but that byte (Excel writes such), so the next
            // one starts with its own
            while self.is_at_boundary() {
                high_byte = self.u8()? & 1 != 0;
            }
            let available = self.segment_end().saturating_sub(self.offset);
            let width = if high_byte { 2 } else { 1 };
            let count = remaining.min(available / width);
            if count == 0 {
                if self.offset >= self.body.len() {
                    if cut_short_is_read {
                        break;
                    }
                    bail!("the record ends inside a string");
                }
                bail!("a string is cut inside a character");
            }
            let bytes = self.bytes(count * width)?;
            if high_byte {
                units.extend(
                    bytes
                        .chunks_exact(2)
                        .map(|pair| u16::from_le_bytes([pair[0], pair[1]])),
                );
            } else {
                units.extend(bytes.iter().map(|byte| u16::from(*byte)));
            }
            remaining -= count;
        }
        text.extend(
            char::decode_utf16(units.iter().copied()).map(|unit| unit.unwrap_or('\u{FFFD}')),
        );
        Ok(())
    }

    /// An `XLUnicodeString` (16-bit count, flags, characters).
    pub(super) fn unicode_string(
        &mut self,
        text: &mut String,
        units: &mut Vec<u16>,
    ) -> anyhow::Result<()> {
        self.counted_string(text, units, false)
    }

    /// An `XLUnicodeString` whose characters may be cut short by the end of the record:
    /// what the record holds is read. Only for a FORMAT's code, where writers that count
    /// one character too many exist and the code only decides whether a number is a date
    /// (calamine and xlrd read it so too); a cell's text cut short stays an error.
    pub(super) fn unicode_string_as_held(
        &mut self,
        text: &mut String,
        units: &mut Vec<u16>,
    ) -> anyhow::Result<()> {
        self.counted_string(text, units, true)
    }

    /// An `XLUnicodeString`. An empty one may end the record before its flags byte (some
    /// writers leave it out; calamine and Excel read it as empty).
    fn counted_string(
        &mut self,
        text: &mut String,
        units: &mut Vec<u16>,
        cut_short_is_read: bool,
    ) -> anyhow::Result<()> {
        let char_count = usize::from(self.u16()?);
        if char_count == 0 && self.is_at_end() {
            return Ok(());
        }
        let flags = self.u8()?;
        self.chars_within(char_count, flags & 1 != 0, text, units, cut_short_is_read)
    }

    /// A `ShortXLUnicodeString` (8-bit count, flags, characters).
    pub(super) fn short_unicode_string(
        &mut self,
        text: &mut String,
        units: &mut Vec<u16>,
    ) -> anyhow::Result<()> {
        let char_count = usize::from(self.u8()?);
        let flags = self.u8()?;
        self.chars(char_count, flags & 1 != 0, text, units)
    }

    /// An `XLUnicodeRichExtendedString` (a shared string): rich-text runs and phonetic
    /// data are skipped.
    pub(super) fn rich_extended_string(
        &mut self,
        text: &mut String,
        units: &mut Vec<u16>,
    ) -> anyhow::Result<()> {
        let char_count = usize::from(self.u16()?);
        let flags = self.u8()?;
        let run_count = if flags & 0x08 != 0 {
            usize::from(self.u16()?)
        } else {
            0
        };
        let phonetic_bytes = if flags & 0x04 != 0 {
            self.u32()? as usize
        } else {
            0
        };
        self.chars(char_count, flags & 1 != 0, text, units)?;
        self.skip(run_count * 4)?;
        self.skip(phonetic_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record<'a>(body: &'a [u8], boundaries: &'a [usize]) -> Record<'a> {
        Record {
            kind: 0x00FC,
            body,
            boundaries,
        }
    }

    #[test]
    fn a_string_split_by_a_continue_rereads_its_high_byte_flag() {
        // "abc" compressed, then "dé" as UTF-16 after a CONTINUE whose flag byte is 1
        let mut body = vec![5, 0, 0, b'a', b'b', b'c'];
        body.extend([1, b'd', 0, 0xE9, 0]);
        let boundaries = [6];
        let mut cursor = Cursor::new(&record(&body, &boundaries), 0);
        let (mut text, mut units) = (String::new(), Vec::new());
        cursor.unicode_string(&mut text, &mut units).unwrap();
        assert_eq!(text, "abcdé");
        assert!(cursor.is_at_end());
    }

    #[test]
    fn rich_runs_and_phonetic_data_are_skipped_across_a_continue() {
        // two runs (8 bytes) and 3 bytes of phonetic data, the runs split by a CONTINUE
        let mut body = vec![2, 0, 0x0C, 2, 0, 3, 0, 0, 0, b'h', b'i', 1, 2, 3, 4];
        let boundary = body.len();
        body.extend([5, 6, 7, 8, 9, 9, 9]);
        body.extend([1, 0, 0, b'x']);
        let boundaries = [boundary];
        let mut cursor = Cursor::new(&record(&body, &boundaries), 0);
        let (mut text, mut units) = (String::new(), Vec::new());
        cursor.rich_extended_string(&mut text, &mut units).unwrap();
        assert_eq!(text, "hi");
        text.clear();
        cursor.rich_extended_string(&mut text, &mut units).unwrap();
        assert_eq!(text, "x");
    }

    #[test]
    fn a_string_longer_than_its_record_is_an_error_unless_read_as_held() {
        let body = [9, 0, 0, b'a'];
        let mut cursor = Cursor::new(&record(&body, &[]), 0);
        let (mut text, mut units) = (String::new(), Vec::new());
        assert!(cursor.unicode_string(&mut text, &mut units).is_err());
        let mut cursor = Cursor::new(&record(&body, &[]), 0);
        cursor
            .unicode_string_as_held(&mut text, &mut units)
            .unwrap();
        assert_eq!(text, "a");
        // a cut inside a UTF-16 character is still an error
        let body = [2, 0, 1, b'a', 0, b'b'];
        let mut cursor = Cursor::new(&record(&body, &[]), 0);
        assert!(
            cursor
                .unicode_string_as_held(&mut text, &mut units)
                .is_err()
        );
    }

    #[test]
    fn a_continue_holding_only_a_flag_byte_hands_on_to_the_next() {
        // "ab" compressed, then a CONTINUE of one flag byte, then one whose flag says UTF-16
        let body = [4, 0, 0, b'a', b'b', 1, 1, b'c', 0, b'd', 0];
        let boundaries = [5, 6];
        let mut cursor = Cursor::new(&record(&body, &boundaries), 0);
        let (mut text, mut units) = (String::new(), Vec::new());
        cursor.unicode_string(&mut text, &mut units).unwrap();
        assert_eq!(text, "abcd");
        assert!(cursor.is_at_end());
    }

    #[test]
    fn an_empty_string_may_end_the_record_without_its_flags_byte() {
        let body = [0, 0];
        let mut cursor = Cursor::new(&record(&body, &[]), 0);
        let (mut text, mut units) = (String::new(), Vec::new());
        cursor.unicode_string(&mut text, &mut units).unwrap();
        assert_eq!(text, "");
        // with characters to come, the flags byte is needed
        let body = [1, 0];
        let mut cursor = Cursor::new(&record(&body, &[]), 0);
        assert!(cursor.unicode_string(&mut text, &mut units).is_err());
    }
}
