//! Making names and values safe to show in an error or log line.
//!
//! Everything a file or a user supplies can end up in a message: file names, sheet names,
//! header cells, zip member names, table names, the text of a library's error. Any of them
//! may hold a newline, an escape sequence or a NUL (which break the contract's one clear
//! line, or a terminal), and any of them may be megabytes long. [`shown`] escapes control
//! characters and cuts long text, and every message that quotes such a name goes through it
//! (or [`quoted`], or [`shown_path`]); [`final_line`] is the last guard `main` applies to the
//! whole error line, in case a library's message slipped through unescaped.

use std::path::Path;

/// Most characters of one name or value a message quotes; longer text is cut, with an
/// ellipsis and its full length.
pub const MAX_SHOWN_CHARS: usize = 200;

/// Most characters of a value from a file (a cell's text, an attribute, a number that is
/// not one) an error or rejection line quotes: enough to recognise it, and a line that
/// quotes a megabyte of markup stays short.
pub const MAX_VALUE_CHARS: usize = 100;

/// Most characters of the final error line: room for a few quoted names and their context.
pub const MAX_LINE_CHARS: usize = 2_000;

/// `text` safe for a message: control characters as visible escapes (`\n`, `\u{1b}`,
/// `\0`), cut after [`MAX_SHOWN_CHARS`] characters with `…` and the full length.
pub fn shown(text: &str) -> String {
    cut(text, MAX_SHOWN_CHARS)
}

/// `text` in double quotes, escaped and cut as by [`shown`] (quotes inside are escaped
/// too, so the quoted name cannot look like it ends early).
pub fn quoted(text: &str) -> String {
    quoted_within(text, MAX_SHOWN_CHARS)
}

/// A value read from a file, for an error line: quoted and escaped as by [`quoted`], cut
/// after [`MAX_VALUE_CHARS`] characters.
pub fn quoted_value(text: &str) -> String {
    quoted_within(text, MAX_VALUE_CHARS)
}

/// A value read from a file (an element name, say) escaped and cut as by [`quoted_value`],
/// without the quotes.
pub fn shown_value(text: &str) -> String {
    cut(text, MAX_VALUE_CHARS)
}

fn quoted_within(text: &str, max_chars: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max_chars) + 2);
    out.push('"');
    let escaped = cut(text, max_chars);
    for character in escaped.chars() {
        if character == '"' {
            out.push_str("\\\"");
        } else {
            out.push(character);
        }
    }
    out.push('"');
    out
}

/// A path safe for a message, as [`shown`] makes any text (lossy for non-UTF-8 names).
pub fn shown_path(path: &Path) -> String {
    shown(&path.to_string_lossy())
}

/// `text` with every naming of `path` (as [`shown_path`] shows it, as it displays, or by its
/// file name alone) replaced by `name`, made safe as by [`shown`]: a message about a file
/// the user knows by another name than its path.
pub fn with_path_shown_as(text: &str, path: &Path, name: &str) -> String {
    let name = shown(name);
    let mut renamed = text
        .replace(&shown_path(path), &name)
        .replace(&path.display().to_string(), &name);
    if let Some(file_name) = path
        .file_name()
        .map(|file_name| file_name.to_string_lossy())
        && !file_name.is_empty()
    {
        renamed = renamed.replace(file_name.as_ref(), &name);
    }
    renamed
}

/// The whole error line made safe: control characters escaped and the length capped at
/// [`MAX_LINE_CHARS`], whatever the message holds.
pub fn final_line(line: &str) -> String {
    cut(line, MAX_LINE_CHARS)
}

/// Escapes control characters and keeps at most `max_chars` characters of `text`
/// (counting an escape as one), then notes the full length.
fn cut(text: &str, max_chars: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max_chars * 2));
    let mut characters = text.chars();
    for (kept, character) in characters.by_ref().enumerate() {
        if kept == max_chars {
            let rest = 1 + characters.count();
            out.push_str(&format!("… ({} characters)", kept + rest));
            return out;
        }
        push_escaped(&mut out, character);
    }
    out
}

fn push_escaped(out: &mut String, character: char) {
    match character {
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        '\0' => out.push_str("\\0"),
        // other C0/C1 controls (ESC, BEL, CSI...) and the bidi overrides that reorder text
        _ if character.is_control()
            || matches!(character, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}') =>
        {
            out.push_str(&format!("\\u{{{:x}}}", u32::from(character)));
        }
        _ => out.push(character),
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    #[test]
    fn control_characters_become_visible_escapes() {
        let cases = [
            ("plain name.xlsx", "plain name.xlsx"),
            ("two\nlines", "two\\nlines"),
            ("nul\0byte", "nul\\0byte"),
            ("\u{1b}[31mred", "\\u{1b}[31mred"),
            ("tab\there\r", "tab\\there\\r"),
            ("bidi\u{202e}txt", "bidi\\u{202e}txt"),
            ("Zürich – ✓", "Zürich – ✓"),
        ];
        for (text, expected) in cases {
            assert_eq!(shown(text), expected, "{text:?}");
        }
    }

    #[test]
    fn a_path_is_renamed_however_a_message_names_it() {
        let path = Path::new("/srv/uploads/upload-Ab12.xlsx");
        let long = PathBuf::from(format!("/{}/upload-Cd34.xlsx", "d".repeat(300)));
        let cases = [
            (path, "cannot open /srv/uploads/upload-Ab12.xlsx: bad zip"),
            (path, "sheet \"S\" of upload-Ab12.xlsx has no header"),
            (
                &long,
                &*format!("cannot open {}: bad zip", shown_path(&long)),
            ),
            (&long, &*format!("cannot open {}: bad zip", long.display())),
        ];
        for (path, text) in cases {
            let renamed = with_path_shown_as(text, path, "Q3\nSales.xlsx");
            assert!(renamed.contains("Q3\\nSales.xlsx"), "{renamed}");
            assert!(!renamed.contains("upload-"), "{renamed}");
            assert!(
                !renamed.contains("/srv") && !renamed.contains("ddd"),
                "{renamed}"
            );
        }
        let untouched = "cannot open other.xlsx";
        assert_eq!(with_path_shown_as(untouched, path, "x.xlsx"), untouched);
    }

    #[test]
    fn long_text_is_cut_with_its_full_length() {
        let long = "é".repeat(10_000);
        let got = shown(&long);
        assert_eq!(
            got,
            format!("{}… (10000 characters)", "é".repeat(MAX_SHOWN_CHARS))
        );
        // exactly at the limit: nothing is cut
        let exact = "x".repeat(MAX_SHOWN_CHARS);
        assert_eq!(shown(&exact), exact);
    }

    #[test]
    fn quoted_escapes_quotes_inside() {
        assert_eq!(quoted("a \"b\"\nc"), r#""a \"b\"\nc""#);
    }

    #[test]
    fn a_quoted_value_is_cut_after_a_hundred_characters() {
        let markup = "<v>".repeat(1_000);
        assert_eq!(
            quoted_value(&markup),
            format!("\"{}<… (3000 characters)\"", "<v>".repeat(33))
        );
        assert_eq!(quoted_value("1.5x"), "\"1.5x\"");
        assert_eq!(quoted_value("a\"\n"), r#""a\"\n""#);
    }

    #[test]
    fn the_final_line_is_one_bounded_line() {
        let line = format!("cannot open a\nb: {}", "x".repeat(20_000_000));
        let got = final_line(&line);
        assert!(!got.contains('\n'));
        assert!(got.chars().count() < MAX_LINE_CHARS + 40, "{}", got.len());
        assert!(
            got.ends_with("(20000017 characters)"),
            "{}",
            &got[got.len() - 40..]
        );
    }
}
