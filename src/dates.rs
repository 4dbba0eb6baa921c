//! Date cells and ISO 8601 date strings read as a date and time: what type inference
//! (`schema`) and conversion (`convert`) both ask of a cell, kept apart from both so that
//! neither depends on the other for it. Pure: no I/O.

use calamine::Data;
use chrono::{NaiveDate, NaiveDateTime, NaiveTime};

/// Largest serial, in days either side of the epoch, that a date cell may hold and still
/// be a date: far past what PostgreSQL's timestamp holds (294276 AD is about 1.1e8 days,
/// chrono's last year about 9.6e7), and small enough that calamine's conversion to
/// milliseconds cannot overflow, which it answers with a panic past ±2^63 ms (about 1e11
/// days). A serial beyond it, NaN or infinite, which only a broken file holds, is no date.
pub const MAX_SERIAL_DAYS: f64 = 1e8;

/// Whether `serial` (days since the workbook's epoch) can be a date or a duration.
pub fn is_serial_in_range(serial: f64) -> bool {
    serial.is_finite() && serial.abs() <= MAX_SERIAL_DAYS
}

/// The date and time of a date cell (either epoch, as the workbook declares), or of an ISO
/// 8601 date cell (ods); `None` for other cells, durations, and a serial out of range
/// ([`is_serial_in_range`]).
pub fn cell_datetime(cell: &Data) -> Option<NaiveDateTime> {
    match cell {
        Data::DateTime(excel) if excel.is_datetime() && is_serial_in_range(excel.as_f64()) => {
            excel.as_datetime()
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use calamine::{ExcelDateTime, ExcelDateTimeType};

    #[test]
    fn a_serial_out_of_range_is_no_date_and_never_panics() {
        let date = |serial: f64, is_1904: bool| {
            cell_datetime(&Data::DateTime(ExcelDateTime::new(
                serial,
                ExcelDateTimeType::DateTime,
                is_1904,
            )))
        };
        // (serial, is_1904, the date it is)
        let cases = [
            (45351.5, false, Some("2024-02-29 12:00:00")),
            (0.0, true, Some("1904-01-01 00:00:00")),
            (MAX_SERIAL_DAYS, false, None),
            (-1e300, false, None),
            (1e300, false, None),
            (-1.244e308, true, None),
            (f64::NAN, false, None),
            (f64::INFINITY, false, None),
            (f64::NEG_INFINITY, true, None),
            (-MAX_SERIAL_DAYS * 2.0, false, None),
        ];
        for (serial, is_1904, expected) in cases {
            let got = date(serial, is_1904).map(|datetime| datetime.to_string());
            assert_eq!(got.as_deref(), expected, "serial {serial}");
        }
        assert!(is_serial_in_range(-MAX_SERIAL_DAYS));
        assert!(!is_serial_in_range(f64::NAN));
    }
}
