//! Content sniffing before a workbook is handed to a parser: a file named .xlsx that is
//! really CSV text or an HTML page (what many web "Excel exports" are) gets an error that
//! says so and how to load it, instead of a zip or CFB parser's complaint.
//!
//! Only the first bytes are looked at. A file whose bytes fit its name, or that looks like
//! nothing known, is left to the parser (which reports a corrupt or truncated workbook).

use std::fs::File;
use std::io::Read;
use std::path::Path;

use anyhow::{Context, bail};

/// Bytes looked at.
const HEAD_BYTES: u64 = 512;

/// The start of every zip archive (.xlsx, .xlsm, .xlsb, .ods).
const ZIP_MAGIC: &[u8] = b"PK\x03\x04";

/// The start of every Compound File Binary (.xls, and password-protected .xlsx).
const CFB_MAGIC: &[u8] = &[0xD0, 0xCF, 0x11, 0xE0, 0xA1, 0xB1, 0x1A, 0xE1];

/// What the first bytes of a file look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Content {
    Zip,
    Cfb,
    Html,
    /// Excel's "XML Spreadsheet 2003".
    XmlSpreadsheet,
    /// Text whose first line holds a delimiter.
    CsvText,
    Unknown,
}

/// Fails with a message that names what the file really is, when its content does not fit
/// its workbook extension (`extension` lowercase, without the dot).
pub(super) fn check_workbook(path: &Path, extension: &str) -> anyhow::Result<()> {
    let mut head = Vec::new();
    File::open(path)
        .and_then(|file| file.take(HEAD_BYTES).read_to_end(&mut head))
        .with_context(|| format!("cannot open {}", path.display()))?;
    let name = path.display();
    let claimed = match extension {
        "xlsx" | "xlsm" | "xlsb" | "xls" | "ods" => format!("an .{extension} workbook"),
        _ => "a workbook".to_string(),
    };
    match (sniff(&head), extension) {
        (Content::Zip, "xlsx" | "xlsm" | "xlsb" | "ods") | (Content::Cfb, "xls") => Ok(()),
        (Content::Html, _) => bail!(
            "{name} looks like HTML, not {claimed} (web exports often are; save it as .xlsx or .csv)"
        ),
        (Content::XmlSpreadsheet, _) => bail!(
            "{name} looks like an XML Spreadsheet 2003 file, not {claimed}; save it as .xlsx or .csv"
        ),
        (Content::CsvText, "xlsx" | "xlsm" | "xlsb" | "xls" | "ods") => bail!(
            "{name} looks like CSV text, not {claimed}; rename it to .csv or pass --input-format csv"
        ),
        (Content::CsvText, _) => bail!(
            "{name} is not a spreadsheet but looks like CSV text; rename it to .csv or pass --input-format csv"
        ),
        (Content::Zip, "xls") => bail!(
            "{name} is a zip archive (an .xlsx or .ods workbook), not an .xls workbook; rename it to .xlsx or .ods"
        ),
        (Content::Cfb, "xlsx" | "xlsm" | "xlsb" | "ods") => bail!(
            "{name} is an .xls workbook or a password-protected one, not {claimed}; remove the password or save it as .xlsx"
        ),
        _ => Ok(()),
    }
}

/// The ODF mimetype entry every .ods archive starts with (stored, uncompressed, first).
const ODS_MIMETYPE: &[u8] = b"mimetypeapplication/vnd.oasis.opendocument.spreadsheet";

/// What an uploaded file is by its first bytes (up to [`HEAD_BYTES`]), as the extension its
/// reader expects: `xlsx`, `xlsm`, `xlsb`, `ods`, `xls` or `csv`; `None` when it is no
/// spreadsheet (HTML, binary, an XML Spreadsheet 2003). `claimed`, the extension of the
/// client's file name (lowercase), only chooses among the zip-based formats, and lets a
/// one-column CSV (text without a delimiter) through.
pub fn upload_format(head: &[u8], claimed: Option<&str>) -> Option<&'static str> {
    match (sniff(head), claimed) {
        (Content::Zip, Some("xlsm")) => Some("xlsm"),
        (Content::Zip, Some("xlsb")) => Some("xlsb"),
        (Content::Zip, Some("ods")) => Some("ods"),
        (Content::Zip, _) if head.windows(ODS_MIMETYPE.len()).any(|w| w == ODS_MIMETYPE) => {
            Some("ods")
        }
        (Content::Zip, _) => Some("xlsx"),
        (Content::Cfb, _) => Some("xls"),
        (Content::CsvText, _) => Some("csv"),
        (Content::Unknown, Some("csv")) if is_utf8_text(head) => Some("csv"),
        _ => None,
    }
}

/// Whether `head` is UTF-8 text (a character cut short at its end is allowed).
fn is_utf8_text(head: &[u8]) -> bool {
    let valid = match std::str::from_utf8(head) {
        Ok(_) => true,
        Err(error) => error.error_len().is_none(),
    };
    valid
        && head
            .iter()
            .all(|&byte| byte >= 0x20 || matches!(byte, b'\t' | b'\n' | b'\r'))
}

/// Bytes an upload's first look needs (see [`upload_format`]).
pub const UPLOAD_HEAD_BYTES: usize = HEAD_BYTES as usize;

fn sniff(head: &[u8]) -> Content {
    if head.starts_with(ZIP_MAGIC) {
        return Content::Zip;
    }
    if head.starts_with(CFB_MAGIC) {
        return Content::Cfb;
    }
    let text = head.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(head);
    let start = text
        .iter()
        .position(|byte| !byte.is_ascii_whitespace())
        .unwrap_or(text.len());
    let text = &text[start..];
    let lowercase = text.to_ascii_lowercase();
    let contains = |needle: &[u8]| {
        lowercase
            .windows(needle.len())
            .any(|window| window == needle)
    };
    if text.starts_with(b"<") {
        if contains(b"progid=\"excel.sheet\"")
            || contains(b"urn:schemas-microsoft-com:office:spreadsheet")
        {
            return Content::XmlSpreadsheet;
        }
        if contains(b"<html") || contains(b"<!doctype html") || contains(b"<table") {
            return Content::Html;
        }
        return Content::Unknown;
    }
    if head.starts_with(b"\xFF\xFE") || head.starts_with(b"\xFE\xFF") {
        // a UTF-16 BOM: text, as spreadsheet programs' "Unicode text" exports are
        return Content::CsvText;
    }
    let is_text = text
        .iter()
        .all(|&byte| byte >= 0x20 || matches!(byte, b'\t' | b'\n' | b'\r'));
    // the head may cut a character short: only its valid part must be UTF-8
    let valid = match std::str::from_utf8(text) {
        Ok(_) => true,
        Err(error) => error.error_len().is_none(),
    };
    let first_line = text.split(|&byte| byte == b'\n').next().unwrap_or_default();
    let delimited = first_line
        .iter()
        .any(|byte| matches!(byte, b',' | b';' | b'\t' | b'|'));
    if is_text && valid && delimited {
        Content::CsvText
    } else {
        Content::Unknown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_upload_is_known_by_its_bytes_not_its_name() {
        let cases: [(&[u8], Option<&str>, Option<&str>); 9] = [
            (b"PK\x03\x04rest", Some("xlsx"), Some("xlsx")),
            (b"PK\x03\x04rest", Some("xlsb"), Some("xlsb")),
            (b"PK\x03\x04rest", None, Some("xlsx")),
            (
                b"PK\x03\x04....mimetypeapplication/vnd.oasis.opendocument.spreadsheet",
                Some("zip"),
                Some("ods"),
            ),
            (
                &[0xD0, 0xCF, 0x11, 0xE0, 0xA1, 0xB1, 0x1A, 0xE1, 0],
                Some("xlsx"),
                Some("xls"),
            ),
            (b"name,city\nAda,London\n", Some("xlsx"), Some("csv")),
            (b"name\nAda\n", Some("csv"), Some("csv")),
            (b"<!DOCTYPE html><html>", Some("xlsx"), None),
            (b"\x7fELF\x02\x01\x01\0", Some("xlsx"), None),
        ];
        for (head, claimed, expected) in cases {
            assert_eq!(
                upload_format(head, claimed),
                expected,
                "{head:?} named {claimed:?}"
            );
        }
    }

    #[test]
    fn the_first_bytes_tell_the_format() {
        let cases: [(&[u8], Content); 10] = [
            (b"PK\x03\x04rest", Content::Zip),
            (
                &[0xD0, 0xCF, 0x11, 0xE0, 0xA1, 0xB1, 0x1A, 0xE1, 0],
                Content::Cfb,
            ),
            (b"  <!DOCTYPE html><html>", Content::Html),
            (
                b"<html xmlns:o=\"urn:schemas-microsoft-com:office:office\">",
                Content::Html,
            ),
            (b"<table><tr><td>1</td></tr></table>", Content::Html),
            (
                b"<?xml version=\"1.0\"?>\n<?mso-application progid=\"Excel.Sheet\"?>",
                Content::XmlSpreadsheet,
            ),
            (b"\xEF\xBB\xBFname;city\nann;Oslo\n", Content::CsvText),
            (b"name\tcity\n", Content::CsvText),
            (b"not a workbook", Content::Unknown),
            (b"\x00\x01\x02,,", Content::Unknown),
        ];
        for (head, expected) in cases {
            assert_eq!(sniff(head), expected, "{:?}", String::from_utf8_lossy(head));
        }
    }
}
