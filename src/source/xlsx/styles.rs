//! Date detection from `styles.xml`: which cell formats (`<cellXfs>`) show a number as a
//! date, a time or a duration, decided exactly as calamine decides it (built-in format ids
//! and custom format codes), so both readers give the same cells.

use calamine::{Data, ExcelDateTime, ExcelDateTimeType};

/// How a cell format shows a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CellFormat {
    Other,
    DateTime,
    TimeDelta,
}

/// Whether the custom number format `code` shows a date, a time or a duration: its first
/// section holds a date or time token outside quotes, escapes and brackets (`[h]` and the
/// like make a duration). Ported from calamine's `detect_custom_number_format` (MIT).
pub(crate) fn detect_custom_number_format(code: &str) -> CellFormat {
    let mut escaped = false;
    let mut is_quote = false;
    let mut brackets = 0u8;
    let mut previous = ' ';
    let mut hms = false;
    let mut ap = false;
    for character in code.chars() {
        match (character, escaped, is_quote, ap, brackets) {
            (_, true, ..) => escaped = false,
            ('_' | '\\' | '*', ..) => escaped = true,
            ('"', _, true, _, _) => is_quote = false,
            (_, _, true, _, _) => (),
            ('"', _, _, _, _) => is_quote = true,
            (';', ..) => return CellFormat::Other,
            ('[', ..) => brackets += 1,
            (']', .., 1) if hms => return CellFormat::TimeDelta,
            (']', ..) => brackets = brackets.saturating_sub(1),
            ('a' | 'A', _, _, false, 0) => ap = true,
            ('p' | 'm' | '/' | 'P' | 'M', _, _, true, 0) => return CellFormat::DateTime,
            ('d' | 'm' | 'h' | 'y' | 's' | 'D' | 'M' | 'H' | 'Y' | 'S', _, _, false, 0) => {
                return CellFormat::DateTime;
            }
            _ => {
                if !(hms && character.eq_ignore_ascii_case(&previous)) {
                    hms = previous == '[' && matches!(character, 'm' | 'h' | 's' | 'M' | 'H' | 'S');
                }
            }
        }
        previous = character;
    }
    CellFormat::Other
}

/// How the built-in number format `id` (as written in `numFmtId`) shows a number.
pub(crate) fn builtin_format_by_id(id: &[u8]) -> CellFormat {
    match id {
        b"14" | b"15" | b"16" | b"17" | b"18" | b"19" | b"20" | b"21" | b"22" | b"45" | b"47" => {
            CellFormat::DateTime
        }
        // East Asian built-ins (locale dates and clock times)
        b"27" | b"28" | b"29" | b"30" | b"31" | b"32" | b"33" | b"34" | b"35" | b"36" | b"50"
        | b"51" | b"52" | b"53" | b"54" | b"55" | b"56" | b"57" | b"58" => CellFormat::DateTime,
        // [h]:mm:ss
        b"46" => CellFormat::TimeDelta,
        _ => CellFormat::Other,
    }
}

/// A number as the cell `format` shows it: a date, a duration, or the number itself (an
/// unknown format shows the number), as calamine's `format_excel_f64`.
pub(crate) fn number_cell(number: f64, format: Option<CellFormat>, is_1904: bool) -> Data {
    match format {
        Some(CellFormat::DateTime) => Data::DateTime(ExcelDateTime::new(
            number,
            ExcelDateTimeType::DateTime,
            is_1904,
        )),
        Some(CellFormat::TimeDelta) => Data::DateTime(ExcelDateTime::new(
            number,
            ExcelDateTimeType::TimeDelta,
            is_1904,
        )),
        _ => Data::Float(number),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn date_formats_are_detected_as_calamine_does() {
        for (code, expected) in [
            ("yyyy-mm-dd hh:mm", CellFormat::DateTime),
            ("DD/MM/YY", CellFormat::DateTime),
            ("H:MM:SS;@", CellFormat::DateTime),
            ("[h]:mm:ss", CellFormat::TimeDelta),
            ("0.00%", CellFormat::Other),
            ("\"0000\"", CellFormat::Other),
            ("#,##0\\ [$\\u20bd-46D]", CellFormat::Other),
            ("[Red]0.00", CellFormat::Other),
            ("General", CellFormat::Other),
            ("am/pm", CellFormat::DateTime),
        ] {
            assert_eq!(detect_custom_number_format(code), expected, "{code}");
        }
        assert_eq!(builtin_format_by_id(b"14"), CellFormat::DateTime);
        assert_eq!(builtin_format_by_id(b"46"), CellFormat::TimeDelta);
        assert_eq!(builtin_format_by_id(b"10"), CellFormat::Other);
    }
}
