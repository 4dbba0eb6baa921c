//! The SpreadsheetML scanner: finds tags with `memchr` in a window over an inflating zip
//! member, and decodes the few things cells hold (text with entities and character
//! references, `<![CDATA[`, rich-text and phonetic runs, `xml:space`, `_xHHHH_` escapes).
//!
//! It is not an XML parser: it knows start tags, end tags, empty-element tags, comments,
//! processing instructions and CDATA sections, which is all that worksheet and shared-string
//! parts are made of, and it leaves the meaning of elements to its callers (`sheet`,
//! `strings`). Everything here borrows from the window; nothing allocates per tag or cell.

use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};

use memchr::{memchr, memchr2, memchr3, memmem};

/// Bytes asked of the inflater per read.
const READ_CHUNK_BYTES: usize = 256 * 1024;

/// Bytes of a tag searched byte by byte for its end before memchr takes over.
const SHORT_TAG_BYTES: usize = 128;

/// Why the scanner stopped.
#[derive(Debug)]
pub(super) enum ScanError {
    /// The zip member could not be inflated.
    Io(std::io::Error),
    /// One element needs more of the part in memory at once than the limit allows.
    TooLong,
    /// The reader was told to stop (the sheet no longer needs it).
    Cancelled,
    /// The XML is malformed here; the text says how.
    Malformed(&'static str),
    /// The part is past one of the reader's limits; the text says which.
    Refused(String),
}

impl std::fmt::Display for ScanError {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ScanError::Io(error) => write!(formatter, "cannot inflate: {error}"),
            ScanError::TooLong => {
                formatter.write_str("an element is larger than the reader's limit")
            }
            ScanError::Cancelled => formatter.write_str("cancelled"),
            ScanError::Malformed(what) => write!(formatter, "malformed XML: {what}"),
            ScanError::Refused(why) => formatter.write_str(why),
        }
    }
}

/// A window over a stream of XML bytes: `data()` is what is read and not yet consumed.
pub(super) struct XmlStream<'c, R> {
    reader: R,
    /// Read bytes live in `buffer[position..end]`; the buffer keeps its length, so refills
    /// never zero it again.
    buffer: Vec<u8>,
    /// Index of the first unconsumed byte in `buffer`.
    position: usize,
    end: usize,
    at_end: bool,
    /// Most bytes one element may need in the window at once.
    window_limit: usize,
    cancel: Option<&'c AtomicBool>,
}

impl<'c, R: Read> XmlStream<'c, R> {
    pub(super) fn new(reader: R, window_limit: usize, cancel: Option<&'c AtomicBool>) -> Self {
        Self {
            reader,
            buffer: vec![0; READ_CHUNK_BYTES],
            position: 0,
            end: 0,
            at_end: false,
            window_limit,
            cancel,
        }
    }

    /// The unconsumed bytes.
    #[inline]
    pub(super) fn data(&self) -> &[u8] {
        &self.buffer[self.position..self.end]
    }

    /// Marks `byte_count` bytes of `data()` as consumed.
    #[inline]
    pub(super) fn consume(&mut self, byte_count: usize) {
        self.position += byte_count;
    }

    /// Reads more of the stream behind `data()`; `false` at the end of the stream.
    pub(super) fn fill(&mut self) -> Result<bool, ScanError> {
        if self
            .cancel
            .is_some_and(|cancel| cancel.load(Ordering::Relaxed))
        {
            return Err(ScanError::Cancelled);
        }
        if self.at_end {
            return Ok(false);
        }
        if self.position > 0 {
            self.buffer.copy_within(self.position..self.end, 0);
            self.end -= self.position;
            self.position = 0;
        }
        if self.end > self.window_limit {
            return Err(ScanError::TooLong);
        }
        if self.buffer.len() - self.end < READ_CHUNK_BYTES / 2 {
            self.buffer.resize(self.buffer.len() + READ_CHUNK_BYTES, 0);
        }
        let read = loop {
            match self.reader.read(&mut self.buffer[self.end..]) {
                Ok(read) => break read,
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(ScanError::Io(error)),
            }
        };
        self.end += read;
        if read == 0 {
            self.at_end = true;
        }
        Ok(read > 0)
    }

    /// Moves to the next tag (`<`), discarding the text before it in constant memory and
    /// reading until the whole tag is in the window. `None` at the end of the stream.
    pub(super) fn next_tag(&mut self) -> Result<Option<Tag>, ScanError> {
        loop {
            // tags mostly follow each other directly
            if self.data().first() == Some(&b'<') {
                break;
            }
            match memchr(b'<', self.data()) {
                Some(offset) => {
                    self.position += offset;
                    break;
                }
                None => {
                    self.position = self.end;
                    if !self.fill()? {
                        return Ok(None);
                    }
                }
            }
        }
        loop {
            if let Some(tag) = parse_tag(self.data())? {
                return Ok(Some(tag));
            }
            if !self.fill()? {
                return Err(ScanError::Malformed("the part ends inside a tag"));
            }
        }
    }

    /// Reads until `find` finds what it looks for in `data()`; `None` at the end of the
    /// stream. `find` sees the whole window again after each read.
    pub(super) fn read_until<T>(
        &mut self,
        mut find: impl FnMut(&[u8]) -> Option<T>,
    ) -> Result<Option<T>, ScanError> {
        loop {
            if let Some(found) = find(self.data()) {
                return Ok(Some(found));
            }
            if !self.fill()? {
                return Ok(None);
            }
        }
    }

    /// Consumes everything up to and including the end tag `</qname>`, in constant memory:
    /// for elements too large to hold (an over-long string is skipped, not kept).
    pub(super) fn skip_past_end_tag(&mut self, qname: &[u8]) -> Result<bool, ScanError> {
        loop {
            if let Some(end) = find_end_tag(self.data(), qname) {
                self.position += end.after;
                return Ok(true);
            }
            // keep a tail long enough to hold the start of an end tag cut by the read
            let keep = qname.len() + 3;
            let available = self.data().len();
            if available > keep {
                self.position += available - keep;
            }
            if !self.fill()? {
                return Ok(false);
            }
        }
    }
}

/// What kind of markup starts at a `<`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TagKind {
    /// `<name ...>`
    Start,
    /// `<name .../>`
    Empty,
    /// `</name>`
    End,
    /// `<?...?>`, `<!--...-->`, `<!...>`, `<![CDATA[...]]>`: nothing a caller reads.
    Other,
}

/// One tag found in the window, as byte ranges relative to the `<` it starts at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Tag {
    pub(super) kind: TagKind,
    /// The qualified name (`c`, `x:c`).
    pub(super) name: (usize, usize),
    /// The attributes' text (between the name and `>` or `/>`).
    pub(super) attributes: (usize, usize),
    /// Bytes from the `<` to just after the `>`.
    pub(super) length: usize,
}

impl Tag {
    /// The qualified name, from the bytes the tag was found in.
    pub(super) fn qname<'a>(&self, bytes: &'a [u8]) -> &'a [u8] {
        &bytes[self.name.0..self.name.1]
    }

    /// The name without its namespace prefix.
    pub(super) fn local_name<'a>(&self, bytes: &'a [u8]) -> &'a [u8] {
        local_name(self.qname(bytes))
    }

    /// The attributes' text, from the bytes the tag was found in.
    pub(super) fn attribute_text<'a>(&self, bytes: &'a [u8]) -> &'a [u8] {
        &bytes[self.attributes.0..self.attributes.1]
    }
}

/// `name` without its `prefix:`.
pub(super) fn local_name(name: &[u8]) -> &[u8] {
    match memchr(b':', name) {
        Some(colon) => &name[colon + 1..],
        None => name,
    }
}

fn is_space(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\r' | b'\n')
}

/// Parses the tag at the start of `bytes` (which starts with `<`); `None` when the tag is
/// not complete in `bytes`.
pub(super) fn parse_tag(bytes: &[u8]) -> Result<Option<Tag>, ScanError> {
    debug_assert_eq!(bytes.first(), Some(&b'<'));
    let Some(&second) = bytes.get(1) else {
        return Ok(None);
    };
    let other = |terminator: &[u8], from: usize| {
        memmem::find(&bytes[from..], terminator).map(|offset| Tag {
            kind: TagKind::Other,
            name: (0, 0),
            attributes: (0, 0),
            length: from + offset + terminator.len(),
        })
    };
    match second {
        b'?' => return Ok(other(b"?>", 2)),
        b'!' => {
            if bytes.starts_with(b"<!--") {
                return Ok(other(b"-->", 4));
            }
            if bytes.starts_with(b"<![CDATA[") {
                return Ok(other(b"]]>", 9));
            }
            if b"<!--".starts_with(bytes) || b"<![CDATA[".starts_with(bytes) {
                // too little of it yet to tell
                return Ok(None);
            }
            // a document type declaration: read to its end, its content is never used
            return Ok(other(b">", 2));
        }
        _ => {}
    }
    let (kind, name_start) = if second == b'/' {
        (TagKind::End, 2)
    } else {
        (TagKind::Start, 1)
    };
    let mut index = name_start;
    while index < bytes.len()
        && !is_space(bytes[index])
        && bytes[index] != b'>'
        && bytes[index] != b'/'
    {
        index += 1;
    }
    if index == bytes.len() {
        return Ok(None);
    }
    if index == name_start {
        return Err(ScanError::Malformed("a tag without a name"));
    }
    let name = (name_start, index);
    let attributes_start = index;
    // find the closing '>' outside quoted attribute values: by a scalar loop over the
    // first bytes (the tags that matter are a few dozen bytes, too short for memchr's setup
    // to pay), by memchr past them
    let mut quote = None;
    let scalar_end = bytes.len().min(index + SHORT_TAG_BYTES);
    while index < scalar_end {
        let byte = bytes[index];
        match quote {
            Some(open) if byte == open => quote = None,
            Some(_) => {}
            None if byte == b'>' => break,
            None if byte == b'"' || byte == b'\'' => quote = Some(byte),
            None => {}
        }
        index += 1;
    }
    if index == scalar_end {
        loop {
            if let Some(open) = quote.take() {
                match memchr(open, &bytes[index..]) {
                    Some(close) => index += close + 1,
                    None => return Ok(None),
                }
            }
            let Some(offset) = memchr3(b'>', b'"', b'\'', &bytes[index..]) else {
                return Ok(None);
            };
            index += offset;
            if bytes[index] == b'>' {
                break;
            }
            quote = Some(bytes[index]);
            index += 1;
        }
    }
    let self_closing = index > attributes_start && bytes[index - 1] == b'/';
    let kind = match kind {
        TagKind::Start if self_closing => TagKind::Empty,
        kind => kind,
    };
    let attributes_end = if self_closing { index - 1 } else { index };
    Ok(Some(Tag {
        kind,
        name,
        attributes: (attributes_start, attributes_end),
        length: index + 1,
    }))
}

/// The raw value of attribute `name` (qualified name, compared exactly) in a tag's
/// attribute text: the first one of that name.
pub(super) fn attribute<'a>(attributes: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    Attributes(attributes)
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

/// The (qualified name, raw value) pairs of a tag's attribute text, in order, up to the end
/// or the first malformed one; one pass, so a caller wanting several attributes reads the
/// text once.
pub(super) struct Attributes<'a>(pub(super) &'a [u8]);

impl<'a> Iterator for Attributes<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        // short scalar loops: attribute texts are a few bytes, too short for memchr to pay
        let attributes = self.0;
        let mut index = 0;
        while index < attributes.len() && is_space(attributes[index]) {
            index += 1;
        }
        if index == attributes.len() {
            self.0 = &[];
            return None;
        }
        let key_start = index;
        while index < attributes.len() && attributes[index] != b'=' && !is_space(attributes[index])
        {
            index += 1;
        }
        let key = &attributes[key_start..index];
        while index < attributes.len() && is_space(attributes[index]) {
            index += 1;
        }
        self.0 = &[];
        if attributes.get(index) != Some(&b'=') {
            return None;
        }
        index += 1;
        while index < attributes.len() && is_space(attributes[index]) {
            index += 1;
        }
        let quote = *attributes.get(index)?;
        if quote != b'"' && quote != b'\'' {
            return None;
        }
        let value_start = index + 1;
        let value_end = value_start
            + attributes[value_start..]
                .iter()
                .position(|byte| *byte == quote)?;
        self.0 = &attributes[value_end + 1..];
        Some((key, &attributes[value_start..value_end]))
    }
}

/// Where an end tag is, relative to the bytes searched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct EndTag {
    /// Index of its `<`.
    pub(super) start: usize,
    /// Index just after its `>`.
    pub(super) after: usize,
}

/// Finds the first `</qname>` (whitespace allowed before `>`) in `bytes`.
pub(super) fn find_end_tag(bytes: &[u8], qname: &[u8]) -> Option<EndTag> {
    let mut from = 0;
    while let Some(offset) = memchr(b'<', &bytes[from..]) {
        let start = from + offset;
        if bytes.get(start + 1) != Some(&b'/') {
            from = start + 1;
            continue;
        }
        let name_start = start + 2;
        let name_end = name_start + qname.len();
        if bytes.get(name_start..name_end) == Some(qname) {
            let mut index = name_end;
            while index < bytes.len() && is_space(bytes[index]) {
                index += 1;
            }
            if bytes.get(index) == Some(&b'>') {
                return Some(EndTag {
                    start,
                    after: index + 1,
                });
            }
        }
        from = start + 2;
    }
    None
}

/// A finder for [`XmlStream::read_until`]: the first `</qname>` at or after `from` in the
/// window, as (index of its `<`, index after its `>`). It resumes where the previous
/// window's search stopped, so a long element is scanned once, not once per read.
pub(super) fn resumable_end_tag(
    from: usize,
    qname: &[u8],
) -> impl FnMut(&[u8]) -> Option<(usize, usize)> + '_ {
    let mut searched = from;
    move |data: &[u8]| {
        let start = searched.min(data.len());
        match find_end_tag(&data[start..], qname) {
            Some(end) => Some((start + end.start, start + end.after)),
            None => {
                // an end tag cut by the read may begin in the last few bytes
                searched = data.len().saturating_sub(qname.len() + 3).max(from);
                None
            }
        }
    }
}

/// Appends the character data of `raw` (text between tags, no markup) to `out`: the five
/// predefined entities and numeric character references decoded, and line ends
/// normalised as XML 1.0 says (`\r\n` and a lone `\r` become `\n`; a `&#13;` stays `\r`).
pub(super) fn decode_text(raw: &[u8], out: &mut Vec<u8>) -> Result<(), ScanError> {
    let mut index = 0;
    while let Some(offset) = memchr2(b'&', b'\r', &raw[index..]) {
        out.extend_from_slice(&raw[index..index + offset]);
        index += offset;
        if raw[index] == b'\r' {
            out.push(b'\n');
            index += 1;
            if raw.get(index) == Some(&b'\n') {
                index += 1;
            }
            continue;
        }
        let Some(length) = memchr(b';', &raw[index..]).filter(|length| *length <= 12) else {
            return Err(ScanError::Malformed("an '&' that starts no entity"));
        };
        let entity = &raw[index + 1..index + length];
        match entity {
            b"amp" => out.push(b'&'),
            b"lt" => out.push(b'<'),
            b"gt" => out.push(b'>'),
            b"quot" => out.push(b'"'),
            b"apos" => out.push(b'\''),
            _ => {
                let character = character_reference(entity).ok_or(ScanError::Malformed(
                    "an unknown entity or a bad character reference",
                ))?;
                let mut encoded = [0; 4];
                out.extend_from_slice(character.encode_utf8(&mut encoded).as_bytes());
            }
        }
        index += length + 1;
    }
    out.extend_from_slice(&raw[index..]);
    Ok(())
}

/// The character of `#NNN` or `#xHHH`.
fn character_reference(entity: &[u8]) -> Option<char> {
    let digits = entity.strip_prefix(b"#")?;
    let (digits, radix) = match digits.strip_prefix(b"x") {
        Some(hex) => (hex, 16),
        None => (digits, 10),
    };
    let code = u32::from_str_radix(std::str::from_utf8(digits).ok()?, radix).ok()?;
    if code == 0 {
        return None;
    }
    char::from_u32(code)
}

/// Appends the text of `raw` element content that may hold CDATA sections and comments
/// (the content of a `<t>`), decoded as [`decode_text`] does.
fn decode_content(raw: &[u8], out: &mut Vec<u8>) -> Result<(), ScanError> {
    let mut index = 0;
    while let Some(offset) = memchr(b'<', &raw[index..]) {
        decode_text(&raw[index..index + offset], out)?;
        index += offset;
        let tag =
            parse_tag(&raw[index..])?.ok_or(ScanError::Malformed("an unclosed tag inside text"))?;
        if raw[index..].starts_with(b"<![CDATA[") {
            let inner = &raw[index + 9..index + tag.length - 3];
            // CDATA holds no entities, but its line ends are normalised too
            let mut rest = inner;
            while let Some(carriage) = memchr(b'\r', rest) {
                out.extend_from_slice(&rest[..carriage]);
                out.push(b'\n');
                rest = &rest[carriage + 1..];
                if rest.first() == Some(&b'\n') {
                    rest = &rest[1..];
                }
            }
            out.extend_from_slice(rest);
        }
        index += tag.length;
    }
    decode_text(&raw[index..], out)
}

/// Decodes the content of a string item (`<si>` in the shared strings, `<is>` in a cell)
/// into `out`, as calamine does: the text of every `<t>` outside phonetic runs (`<rPh>`)
/// concatenated, each `<t>` trimmed of ASCII whitespace unless `xml:space="preserve"`, and
/// `_xHHHH_` escapes decoded. `scratch` is a reusable buffer.
pub(super) fn decode_string_item(
    content: &[u8],
    out: &mut Vec<u8>,
    scratch: &mut Vec<u8>,
) -> Result<(), ScanError> {
    let mut index = 0;
    let mut phonetic = false;
    while let Some(offset) = memchr(b'<', &content[index..]) {
        index += offset;
        let tag = parse_tag(&content[index..])?
            .ok_or(ScanError::Malformed("an unclosed tag inside a string"))?;
        let local = tag.local_name(&content[index..]);
        match (tag.kind, local) {
            (TagKind::Start, b"rPh") => phonetic = true,
            (TagKind::End, b"rPh") => phonetic = false,
            (TagKind::Start, b"t") => {
                let qname = tag.qname(&content[index..]);
                let body_start = index + tag.length;
                let end = find_end_tag(&content[body_start..], qname)
                    .ok_or(ScanError::Malformed("a <t> without its </t>"))?;
                if !phonetic {
                    let preserve = attribute(tag.attribute_text(&content[index..]), b"xml:space")
                        == Some(b"preserve");
                    scratch.clear();
                    decode_content(&content[body_start..body_start + end.start], scratch)?;
                    let text: &[u8] = if preserve {
                        scratch
                    } else {
                        trim_ascii_whitespace(scratch)
                    };
                    unescape_excel(text, out);
                }
                index = body_start + end.after;
                continue;
            }
            _ => {}
        }
        index += tag.length;
    }
    Ok(())
}

/// `bytes` without leading and trailing space, tab, CR and LF (other Unicode spaces stay).
pub(super) fn trim_ascii_whitespace(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|byte| !is_space(*byte))
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|byte| !is_space(*byte))
        .map_or(start, |last| last + 1);
    &bytes[start..end]
}

/// Bytes of one `_xHHHH_` escape.
const ESCAPE_LENGTH: usize = 7;

/// Appends `text` to `out` with Excel's `_xHHHH_` escapes (UTF-16 code units, surrogate
/// pairs as two escapes) decoded, as calamine's `unescape_xml` does: an unpaired surrogate
/// becomes U+FFFD.
pub(super) fn unescape_excel(text: &[u8], out: &mut Vec<u8>) {
    let mut copied = 0;
    let mut index = 0;
    while let Some(offset) = memchr(b'_', &text[index..]) {
        let at = index + offset;
        let Some(unit) = escape_unit(text, at) else {
            index = at + 1;
            continue;
        };
        out.extend_from_slice(&text[copied..at]);
        let mut next = at + ESCAPE_LENGTH;
        let character = match unit {
            0xD800..=0xDBFF => match escape_unit(text, next) {
                Some(low @ 0xDC00..=0xDFFF) => {
                    next += ESCAPE_LENGTH;
                    let code =
                        0x10000 + ((u32::from(unit) - 0xD800) << 10) + (u32::from(low) - 0xDC00);
                    char::from_u32(code).unwrap_or(char::REPLACEMENT_CHARACTER)
                }
                _ => char::REPLACEMENT_CHARACTER,
            },
            0xDC00..=0xDFFF => char::REPLACEMENT_CHARACTER,
            _ => char::from_u32(u32::from(unit)).unwrap_or(char::REPLACEMENT_CHARACTER),
        };
        let mut encoded = [0; 4];
        out.extend_from_slice(character.encode_utf8(&mut encoded).as_bytes());
        copied = next;
        index = next;
    }
    out.extend_from_slice(&text[copied..]);
}

/// The UTF-16 code unit of an `_xHHHH_` escape at `at`, if there is one.
fn escape_unit(text: &[u8], at: usize) -> Option<u16> {
    let bytes = text.get(at..at + ESCAPE_LENGTH)?;
    if bytes[0] != b'_' || bytes[1] != b'x' || bytes[6] != b'_' {
        return None;
    }
    let hex = &bytes[2..6];
    if !hex.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    u16::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn string_item(xml: &str) -> String {
        let mut out = Vec::new();
        decode_string_item(xml.as_bytes(), &mut out, &mut Vec::new()).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn string_items_decode_as_calamine_does() {
        let cases = [
            ("<t>plain</t>", "plain"),
            ("<t>  trimmed \r\n</t>", "trimmed"),
            ("<t xml:space=\"preserve\">  kept </t>", "  kept "),
            (
                "<r><rPr><b/></rPr><t>bold</t></r><r><t xml:space=\"preserve\"> and</t></r>",
                "bold and",
            ),
            (
                "<t>漢字</t><rPh sb=\"0\" eb=\"2\"><t>カンジ</t></rPh>",
                "漢字",
            ),
            (
                "<t>a &amp; b &lt;c&gt; &quot;&apos; &#65;&#x42;</t>",
                "a & b <c> \"' AB",
            ),
            ("<t>line\r\nbreak&#13;</t>", "line\nbreak"),
            ("<t xml:space=\"preserve\">cr&#13;</t>", "cr\r"),
            ("<t>_x000D_x_x005F_x000D_</t>", "\rx_x000D_"),
            ("<t>_xD83D__xDCF7_ _xD83D_</t>", "📷 \u{FFFD}"),
            ("<t><![CDATA[<raw> & ]]></t>", "<raw> &"),
            ("<t/>", ""),
            ("", ""),
            ("<x:t>prefixed</x:t>", "prefixed"),
        ];
        for (xml, expected) in cases {
            assert_eq!(string_item(xml), expected, "{xml}");
        }
    }

    #[test]
    fn tags_are_parsed_with_quoted_gt_and_prefixes() {
        let bytes = b"<x:c r=\"A1\" t='a>b'/>rest";
        let tag = parse_tag(bytes).unwrap().unwrap();
        assert_eq!(tag.kind, TagKind::Empty);
        assert_eq!(tag.qname(bytes), b"x:c");
        assert_eq!(tag.local_name(bytes), b"c");
        assert_eq!(&bytes[tag.length..], b"rest");
        let attributes = tag.attribute_text(bytes);
        assert_eq!(attribute(attributes, b"r"), Some(&b"A1"[..]));
        assert_eq!(attribute(attributes, b"t"), Some(&b"a>b"[..]));
        assert_eq!(attribute(attributes, b"s"), None);
        assert_eq!(parse_tag(b"<c r=\"A1").unwrap(), None);
        assert_eq!(parse_tag(b"</row >").unwrap().unwrap().kind, TagKind::End);
        assert_eq!(parse_tag(b"<!-- x -->").unwrap().unwrap().length, 10);
    }

    #[test]
    fn bad_entities_are_errors_not_guesses() {
        for raw in ["&nbsp;", "& b", "&#0;", "&#xD800;", "&#99999999;"] {
            assert!(
                decode_text(raw.as_bytes(), &mut Vec::new()).is_err(),
                "{raw}"
            );
        }
    }

    #[test]
    fn whitespace_between_tags_streams_in_constant_memory() {
        let mut xml = vec![b' '; 20 * READ_CHUNK_BYTES];
        xml.extend_from_slice(b"<row/>");
        let mut stream = XmlStream::new(&xml[..], READ_CHUNK_BYTES, None);
        let tag = stream.next_tag().unwrap().unwrap();
        assert_eq!(tag.kind, TagKind::Empty);
        assert!(stream.buffer.len() <= 3 * READ_CHUNK_BYTES);
    }
}
