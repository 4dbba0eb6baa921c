//! Date cells and ISO 8601 date strings read as a date and time: what type inference
//! (`schema`) and conversion (`convert`) both ask of a cell, kept apart from both so that
//! neither depends on the other for it. Pure: no I/O.

use calamine::Data;
use chrono::{NaiveDate, NaiveDateTime, NaiveTime};

/// The date and time of a date cell (either epoch, as the workbook declares), or of an ISO
/// 8601 date cell (ods); `None` for other cells and durations.
pub fn cell_datetime(cell: &Data) -> Option<NaiveDateTime> {
    match cell {
        Data::DateTime(excel) if excel.is_datetime() => excel.as_datetime(),
        Data::DateTimeIso(text) => parse_naive_datetime(text),
        _ => None,
    }
}

/// `YYYY-MM-DDTHH:MM:SS[.f]`, `YYYY-MM-DD HH:MM:SS[.f]` or `YYYY-MM-DD` (at midnight).
pub fn parse_naive_datetime(text: &str) -> Option<NaiveDateTime> {
    let text = text.trim();
    for format in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
        if let Ok(datetime) = NaiveDateTime::parse_from_str(text, format) {
            return Some(datetime);
        }
    }
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .map(|date| date.and_time(NaiveTime::MIN))
}
