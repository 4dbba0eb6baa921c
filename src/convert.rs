//! Cell conversion: one calamine cell plus the target column's type gives the value that is
//! sent, in PostgreSQL's text input form, or a [`Rejection`] that says why not.
//!
//! Pure: no I/O, no async, no SQL. Every strategy sends exactly these values (bound as text
//! and cast by the column's type, or COPY-encoded), so all methods agree by construction.
//! The rules are the contract's "Cell -> column conversion" table.

use calamine::Data;
use chrono::{DateTime, FixedOffset, NaiveDate, NaiveDateTime, NaiveTime};

use crate::dates::{cell_datetime, is_serial_in_range, parse_naive_datetime};
use crate::schema::{Column, ColumnType, is_i64};

/// A converted cell in PostgreSQL's text input form for its column, or `None` for NULL.
pub type Value = Option<String>;

/// Why a row was refused: the column at fault (empty when the server refused the whole row)
/// and a short, stable reason.
///
/// A reason that quotes the cell puts the quote after its first `": "` (`not an integer:
/// 3.5`), as PostgreSQL's own messages do (`invalid input syntax for type inet: "x"`);
/// [`Rejection::reason_without_value`] relies on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The target column's name, or empty when no single column is at fault.
    pub column: String,
    /// Short reason, e.g. `not an integer: 3.5`.
    pub reason: String,
}

impl Rejection {
    /// The reason with no cell value in it, for the logs (cell values go only to the
    /// rejects file): `not an integer` for `not an integer: 3.5`. A server message keeps
    /// the constraint it names (`duplicate key value violates unique constraint
    /// "people_email_key"`: PostgreSQL puts the values of such errors in DETAIL, which is
    /// not part of the reason); without a constraint, double-quoted parts are dropped too,
    /// since the server quotes values there (`value "99999999999" is out of range for
    /// type integer`).
    pub fn reason_without_value(&self) -> String {
        let what = match self.reason.split_once(": ") {
            Some((what, _value)) => what,
            None => self.reason.as_str(),
        };
        if what.contains(" constraint \"") || !what.contains('"') {
            return what.to_string();
        }
        let mut kept = String::with_capacity(what.len());
        for (index, part) in what.split('"').enumerate() {
            // odd parts are inside quotes
            if index % 2 == 0 {
                kept.push_str(part);
            }
        }
        kept.split_whitespace().collect::<Vec<_>>().join(" ")
    }
}

/// Longest cell excerpt quoted in a rejection reason, in characters.
const REASON_VALUE_CHARS: usize = 60;

/// Converts one cell for `column` (contract: "Cell -> column conversion").
pub fn convert_cell(cell: &Data, column: &Column) -> Result<Value, Rejection> {
    let reject = |reason: String| Rejection {
        column: column.name.clone(),
        reason,
    };
    if let Data::Error(error) = cell {
        return Err(reject(format!("excel error {error}")));
    }
    if is_null(cell, column.column_type) {
        // contract: NULL for a NOT NULL column without a default rejects the row; with a
        // default, the insert falls back to the default (see sink::insert)
        if column.not_null && !column.has_default {
            return Err(reject("null value in NOT NULL column".to_string()));
        }
        return Ok(None);
    }
    let converted = match column.column_type {
        ColumnType::Text | ColumnType::Other => Ok(cell_text(cell)),
        ColumnType::SmallInt => to_integer(cell, i16::MIN.into(), i16::MAX.into(), "smallint"),
        ColumnType::Integer => to_integer(cell, i32::MIN.into(), i32::MAX.into(), "integer"),
        ColumnType::BigInt => to_integer(cell, i64::MIN, i64::MAX, "bigint"),
        ColumnType::Numeric | ColumnType::Float => to_number(cell),
        ColumnType::Boolean => to_boolean(cell),
        ColumnType::Date => to_date(cell),
        ColumnType::Timestamp => to_timestamp(cell),
        ColumnType::TimestampTz => to_timestamptz(cell),
        ColumnType::Uuid => to_uuid(cell),
        ColumnType::Json => to_json(cell),
    };
    converted.map(Some).map_err(reject)
}

/// Whether the cell is NULL for this column type: empty for every type, and a
/// whitespace-only string for every type but text.
fn is_null(cell: &Data, column_type: ColumnType) -> bool {
    match cell {
        Data::Empty => true,
        Data::String(text) => text.is_empty() || (!column_type.is_text() && text.trim().is_empty()),
        _ => false,
    }
}

/// The cell as text, the way a text column receives it and the rejects file shows it.
pub fn cell_text(cell: &Data) -> String {
    match cell {
        Data::Empty => String::new(),
        Data::String(text) => text.clone(),
        Data::Int(value) => value.to_string(),
        Data::Float(value) => float_text(*value),
        Data::Bool(value) => value.to_string(),
        // a serial out of range (a broken file) is shown as the number it is
        Data::DateTime(excel) if !is_serial_in_range(excel.as_f64()) => float_text(excel.as_f64()),
        Data::DateTime(excel) if excel.is_duration() => {
            duration_text(excel.as_f64() * 86_400_000.0)
        }
        Data::DateTime(_) | Data::DateTimeIso(_) => match cell_datetime(cell) {
            Some(datetime) => datetime_text(datetime),
            None => match cell {
                Data::DateTimeIso(text) => text.clone(),
                Data::DateTime(excel) => float_text(excel.as_f64()),
                _ => String::new(),
            },
        },
        Data::DurationIso(text) => text.clone(),
        Data::Error(error) => error.to_string(),
    }
}

/// Floats in their shortest round-trip form without exponent; integral ones without ".0"
/// (contract: 5551234.0 -> "5551234"); -0 as "0"; PostgreSQL's spelling of NaN and infinity.
fn float_text(value: f64) -> String {
    if value == 0.0 {
        "0".to_string()
    } else if value.is_nan() {
        "NaN".to_string()
    } else if value.is_infinite() {
        if value > 0.0 { "Infinity" } else { "-Infinity" }.to_string()
    } else {
        // Display is the shortest representation that round-trips, and prints 5.0 as "5"
        value.to_string()
    }
}

/// An Excel duration (`[h]:mm:ss`) as `H:MM:SS[.fff]`, which interval input also accepts.
fn duration_text(milliseconds: f64) -> String {
    let total = milliseconds.round() as i64;
    let sign = if total < 0 { "-" } else { "" };
    let total = total.unsigned_abs();
    let (hours, rest) = (total / 3_600_000, total % 3_600_000);
    let (minutes, rest) = (rest / 60_000, rest % 60_000);
    let (seconds, millis) = (rest / 1000, rest % 1000);
    if millis == 0 {
        format!("{sign}{hours}:{minutes:02}:{seconds:02}")
    } else {
        format!("{sign}{hours}:{minutes:02}:{seconds:02}.{millis:03}")
    }
}

/// `YYYY-MM-DD` without a time part, else `YYYY-MM-DD HH:MM:SS` (with `.fff` when the
/// fraction is not zero, so no precision is dropped).
fn datetime_text(datetime: NaiveDateTime) -> String {
    if datetime.time() == NaiveTime::MIN {
        datetime.format("%Y-%m-%d").to_string()
    } else {
        datetime.format("%Y-%m-%d %H:%M:%S%.f").to_string()
    }
}

fn parse_offset_datetime(text: &str) -> Option<DateTime<FixedOffset>> {
    let text = text.trim();
    for format in ["%Y-%m-%dT%H:%M:%S%.f%#z", "%Y-%m-%d %H:%M:%S%.f%#z"] {
        if let Ok(datetime) = DateTime::parse_from_str(text, format) {
            return Some(datetime);
        }
    }
    // a trailing Z is UTC
    let utc = text.strip_suffix('Z').or_else(|| text.strip_suffix('z'))?;
    parse_naive_datetime(utc).map(|naive| naive.and_utc().fixed_offset())
}

/// The cell quoted in a reason, cut to [`REASON_VALUE_CHARS`].
fn excerpt(cell: &Data) -> String {
    let text = cell_text(cell);
    if text.chars().count() <= REASON_VALUE_CHARS {
        text
    } else {
        let cut: String = text.chars().take(REASON_VALUE_CHARS).collect();
        format!("{cut}...")
    }
}

fn to_integer(cell: &Data, min: i64, max: i64, type_name: &str) -> Result<String, String> {
    let value = match cell {
        Data::Int(value) => *value,
        Data::Float(value) if value.fract() != 0.0 || !value.is_finite() => {
            return Err(format!("not an integer: {}", excerpt(cell)));
        }
        Data::Float(value) if is_i64(*value) => *value as i64,
        Data::Float(_) => return Err(format!("out of range for {type_name}: {}", excerpt(cell))),
        Data::String(text) => {
            let trimmed = text.trim();
            match trimmed.parse::<i64>() {
                Ok(value) => value,
                Err(error) => {
                    use std::num::IntErrorKind::{NegOverflow, PosOverflow};
                    return Err(match error.kind() {
                        PosOverflow | NegOverflow => {
                            format!("out of range for {type_name}: {}", excerpt(cell))
                        }
                        _ => format!("not an integer: {}", excerpt(cell)),
                    });
                }
            }
        }
        _ => return Err(format!("not an integer: {}", excerpt(cell))),
    };
    if value < min || value > max {
        return Err(format!("out of range for {type_name}: {}", excerpt(cell)));
    }
    Ok(value.to_string())
}

fn to_number(cell: &Data) -> Result<String, String> {
    match cell {
        Data::Int(value) => Ok(value.to_string()),
        Data::Float(value) => Ok(float_text(*value)),
        Data::String(text) => {
            let trimmed = text.trim();
            // validated here, sent as written so numeric keeps every digit
            match trimmed.parse::<f64>() {
                Ok(_) => Ok(trimmed.to_string()),
                Err(_) => Err(format!("not a number: {}", excerpt(cell))),
            }
        }
        _ => Err(format!("not a number: {}", excerpt(cell))),
    }
}

fn to_boolean(cell: &Data) -> Result<String, String> {
    let value = match cell {
        Data::Bool(value) => Some(*value),
        Data::Int(1) => Some(true),
        Data::Int(0) => Some(false),
        Data::Float(value) if *value == 1.0 => Some(true),
        Data::Float(value) if *value == 0.0 => Some(false),
        Data::String(text) => match text.trim().to_ascii_lowercase().as_str() {
            "true" | "t" | "yes" | "y" | "1" => Some(true),
            "false" | "f" | "no" | "n" | "0" => Some(false),
            _ => None,
        },
        _ => None,
    };
    value
        .map(|value| value.to_string())
        .ok_or_else(|| format!("not a boolean: {}", excerpt(cell)))
}

fn to_date(cell: &Data) -> Result<String, String> {
    match cell {
        Data::DateTime(_) | Data::DateTimeIso(_) => match cell_datetime(cell) {
            Some(datetime) if datetime.time() == NaiveTime::MIN => {
                Ok(datetime.format("%Y-%m-%d").to_string())
            }
            Some(_) => Err(format!("date has a time part: {}", excerpt(cell))),
            None => Err(format!("not a date: {}", excerpt(cell))),
        },
        Data::String(text) => NaiveDate::parse_from_str(text.trim(), "%Y-%m-%d")
            .map(|date| date.format("%Y-%m-%d").to_string())
            .map_err(|_| format!("not a date (YYYY-MM-DD): {}", excerpt(cell))),
        _ => Err(format!("not a date: {}", excerpt(cell))),
    }
}

fn naive_timestamp(cell: &Data) -> Result<NaiveDateTime, String> {
    let parsed = match cell {
        Data::DateTime(_) | Data::DateTimeIso(_) => cell_datetime(cell),
        Data::String(text) => parse_naive_datetime(text),
        _ => None,
    };
    parsed.ok_or_else(|| format!("not a timestamp: {}", excerpt(cell)))
}

fn to_timestamp(cell: &Data) -> Result<String, String> {
    naive_timestamp(cell).map(|datetime| datetime.format("%Y-%m-%d %H:%M:%S%.f").to_string())
}

fn to_timestamptz(cell: &Data) -> Result<String, String> {
    // contract: taken as UTC unless the string carries an offset
    if let Data::String(text) = cell
        && let Some(datetime) = parse_offset_datetime(text)
    {
        return Ok(datetime.format("%Y-%m-%d %H:%M:%S%.f%:z").to_string());
    }
    naive_timestamp(cell).map(|datetime| datetime.format("%Y-%m-%d %H:%M:%S%.f+00:00").to_string())
}

fn to_uuid(cell: &Data) -> Result<String, String> {
    match cell {
        Data::String(text) => uuid::Uuid::try_parse(text.trim())
            .map(|parsed| parsed.hyphenated().to_string())
            .map_err(|_| format!("not a uuid: {}", excerpt(cell))),
        _ => Err(format!("not a uuid: {}", excerpt(cell))),
    }
}

fn to_json(cell: &Data) -> Result<String, String> {
    match cell {
        Data::String(text) => match serde_json::from_str::<serde::de::IgnoredAny>(text) {
            Ok(_) => Ok(text.clone()),
            Err(_) => Err(format!("not valid JSON: {}", excerpt(cell))),
        },
        Data::Int(value) => Ok(value.to_string()),
        Data::Float(value) if value.is_finite() => Ok(float_text(*value)),
        Data::Bool(value) => Ok(value.to_string()),
        _ => Err(format!("not valid JSON: {}", excerpt(cell))),
    }
}

#[cfg(test)]
mod tests {
    use calamine::{CellErrorType, ExcelDateTime, ExcelDateTimeType};

    use super::*;

    fn column(column_type: ColumnType) -> Column {
        Column {
            name: "c".to_string(),
            column_type,
            sql_type: String::new(),
            not_null: false,
            has_default: false,
            default_sql: None,
        }
    }

    fn text(value: &str) -> Data {
        Data::String(value.to_string())
    }

    fn date_cell(serial: f64, is_1904: bool) -> Data {
        Data::DateTime(ExcelDateTime::new(
            serial,
            ExcelDateTimeType::DateTime,
            is_1904,
        ))
    }

    /// Runs a table of (cell, expected) for one column type; `Err` holds the reason.
    fn check(column_type: ColumnType, cases: &[(Data, Result<Option<&str>, &str>)]) {
        let column = column(column_type);
        for (cell, expected) in cases {
            let got = convert_cell(cell, &column);
            let expected = expected
                .map(|value| value.map(str::to_string))
                .map_err(|reason| Rejection {
                    column: "c".to_string(),
                    reason: reason.to_string(),
                });
            assert_eq!(got, expected, "{column_type:?} <- {cell:?}");
        }
    }

    #[test]
    fn reasons_without_value_keep_what_went_wrong_and_drop_the_cell() {
        let cases = [
            ("not an integer: 3.5", "not an integer"),
            (
                "not a date (YYYY-MM-DD): 2024-13-01",
                "not a date (YYYY-MM-DD)",
            ),
            ("not an integer: a: b \"c\"", "not an integer"),
            ("excel error #DIV/0!", "excel error #DIV/0!"),
            (
                "null value in NOT NULL column",
                "null value in NOT NULL column",
            ),
            (
                "superseded by row 4 (same key)",
                "superseded by row 4 (same key)",
            ),
            (
                "duplicate key value violates unique constraint \"people_email_key\"",
                "duplicate key value violates unique constraint \"people_email_key\"",
            ),
            (
                "new row for relation \"people\" violates check constraint \"age_not_negative\"",
                "new row for relation \"people\" violates check constraint \"age_not_negative\"",
            ),
            (
                "invalid input syntax for type inet: \"10.0.0.999\"",
                "invalid input syntax for type inet",
            ),
            (
                "value \"99999999999\" is out of range for type integer",
                "value is out of range for type integer",
            ),
        ];
        for (reason, expected) in cases {
            let rejection = Rejection {
                column: "c".to_string(),
                reason: reason.to_string(),
            };
            assert_eq!(rejection.reason_without_value(), expected, "{reason}");
        }
    }

    #[test]
    fn text_columns_take_cells_as_the_contract_says() {
        check(
            ColumnType::Text,
            &[
                (text("  padded  "), Ok(Some("  padded  "))),
                (text("   "), Ok(Some("   "))),
                (text(""), Ok(None)),
                (Data::Empty, Ok(None)),
                (text("NULL"), Ok(Some("NULL"))),
                (Data::Float(5551234.0), Ok(Some("5551234"))),
                (Data::Float(3.25), Ok(Some("3.25"))),
                (Data::Float(0.1), Ok(Some("0.1"))),
                (Data::Float(-0.0), Ok(Some("0"))),
                (Data::Float(1e21), Ok(Some("1000000000000000000000"))),
                (Data::Float(f64::NAN), Ok(Some("NaN"))),
                (Data::Int(-7), Ok(Some("-7"))),
                (Data::Bool(true), Ok(Some("true"))),
                (Data::Bool(false), Ok(Some("false"))),
                (date_cell(45000.0, false), Ok(Some("2023-03-15"))),
                (date_cell(45000.5, false), Ok(Some("2023-03-15 12:00:00"))),
                (
                    date_cell(45000.541, false),
                    Ok(Some("2023-03-15 12:59:02.400")),
                ),
                (
                    Data::DateTimeIso("2024-02-29".into()),
                    Ok(Some("2024-02-29")),
                ),
                (
                    Data::DateTimeIso("2024-02-29T08:30:00".into()),
                    Ok(Some("2024-02-29 08:30:00")),
                ),
                (Data::Error(CellErrorType::Div0), Err("excel error #DIV/0!")),
                (Data::Error(CellErrorType::NA), Err("excel error #N/A")),
            ],
        );
    }

    #[test]
    fn integer_columns_take_integral_values_in_range() {
        check(
            ColumnType::BigInt,
            &[
                (Data::Float(42.0), Ok(Some("42"))),
                (Data::Float(-0.0), Ok(Some("0"))),
                (Data::Int(7), Ok(Some("7"))),
                (text(" 12 "), Ok(Some("12"))),
                (text("+12"), Ok(Some("12"))),
                (text("   "), Ok(None)),
                (Data::Float(3.5), Err("not an integer: 3.5")),
                (text("3.5"), Err("not an integer: 3.5")),
                (text("abc"), Err("not an integer: abc")),
                (text("NULL"), Err("not an integer: NULL")),
                (
                    Data::Float(9_223_372_036_854_775_808.0),
                    Err("out of range for bigint: 9223372036854776000"),
                ),
                (
                    Data::Float(-9_223_372_036_854_775_808.0),
                    Ok(Some("-9223372036854775808")),
                ),
                (text("9223372036854775807"), Ok(Some("9223372036854775807"))),
                (
                    text("9223372036854775808"),
                    Err("out of range for bigint: 9223372036854775808"),
                ),
                (Data::Float(f64::NAN), Err("not an integer: NaN")),
                (Data::Float(f64::INFINITY), Err("not an integer: Infinity")),
                (Data::Bool(true), Err("not an integer: true")),
                (date_cell(45000.0, false), Err("not an integer: 2023-03-15")),
                (
                    Data::Error(CellErrorType::Value),
                    Err("excel error #VALUE!"),
                ),
            ],
        );
        check(
            ColumnType::SmallInt,
            &[
                (Data::Float(32767.0), Ok(Some("32767"))),
                (
                    Data::Float(32768.0),
                    Err("out of range for smallint: 32768"),
                ),
                (text("-32769"), Err("out of range for smallint: -32769")),
            ],
        );
        check(
            ColumnType::Integer,
            &[
                (Data::Float(2_147_483_647.0), Ok(Some("2147483647"))),
                (
                    Data::Int(2_147_483_648),
                    Err("out of range for integer: 2147483648"),
                ),
            ],
        );
    }

    #[test]
    fn number_columns_take_numbers_and_numeric_strings() {
        check(
            ColumnType::Numeric,
            &[
                (Data::Float(3.25), Ok(Some("3.25"))),
                (Data::Float(10.0), Ok(Some("10"))),
                (Data::Int(-3), Ok(Some("-3"))),
                (
                    text(" 12345678901234567890.123456789 "),
                    Ok(Some("12345678901234567890.123456789")),
                ),
                (text("1e5"), Ok(Some("1e5"))),
                (text("\t"), Ok(None)),
                (text("12,5"), Err("not a number: 12,5")),
                (Data::Bool(false), Err("not a number: false")),
            ],
        );
        check(ColumnType::Float, &[(Data::Float(0.1), Ok(Some("0.1")))]);
    }

    #[test]
    fn boolean_columns_take_booleans_words_and_one_or_zero() {
        let mut cases: Vec<(Data, Result<Option<&str>, &str>)> = vec![
            (Data::Bool(true), Ok(Some("true"))),
            (Data::Float(1.0), Ok(Some("true"))),
            (Data::Float(0.0), Ok(Some("false"))),
            (Data::Int(1), Ok(Some("true"))),
            (Data::Float(2.0), Err("not a boolean: 2")),
            (text("maybe"), Err("not a boolean: maybe")),
        ];
        for word in ["true", "T", "Yes", "y", "1", " TRUE "] {
            cases.push((text(word), Ok(Some("true"))));
        }
        for word in ["false", "F", "NO", "n", "0"] {
            cases.push((text(word), Ok(Some("false"))));
        }
        check(ColumnType::Boolean, &cases);
    }

    #[test]
    fn date_columns_honour_both_epochs_and_refuse_time_parts() {
        check(
            ColumnType::Date,
            &[
                (date_cell(45000.0, false), Ok(Some("2023-03-15"))),
                // the same calendar day is 1462 days lower in the 1904 system
                (date_cell(45000.0 - 1462.0, true), Ok(Some("2023-03-15"))),
                (date_cell(0.0, true), Ok(Some("1904-01-01"))),
                (date_cell(61.0, false), Ok(Some("1900-03-01"))),
                (
                    date_cell(45000.25, false),
                    Err("date has a time part: 2023-03-15 06:00:00"),
                ),
                (text("2024-02-29"), Ok(Some("2024-02-29"))),
                (text(" 2024-02-29 "), Ok(Some("2024-02-29"))),
                (
                    text("2023-02-29"),
                    Err("not a date (YYYY-MM-DD): 2023-02-29"),
                ),
                (
                    text("29/02/2024"),
                    Err("not a date (YYYY-MM-DD): 29/02/2024"),
                ),
                (Data::Float(45000.0), Err("not a date: 45000")),
                (
                    Data::DateTimeIso("2024-01-02".into()),
                    Ok(Some("2024-01-02")),
                ),
            ],
        );
    }

    #[test]
    fn timestamp_columns_take_date_cells_and_iso_strings() {
        check(
            ColumnType::Timestamp,
            &[
                (date_cell(45000.5, false), Ok(Some("2023-03-15 12:00:00"))),
                (date_cell(45000.0, false), Ok(Some("2023-03-15 00:00:00"))),
                (text("2024-01-02 03:04:05"), Ok(Some("2024-01-02 03:04:05"))),
                (
                    text("2024-01-02T03:04:05.25"),
                    Ok(Some("2024-01-02 03:04:05.250")),
                ),
                (
                    text("2024-01-02T03:04:05.123456"),
                    Ok(Some("2024-01-02 03:04:05.123456")),
                ),
                (text("yesterday"), Err("not a timestamp: yesterday")),
                // serials only a broken file holds: rejected, shown as the number
                (date_cell(f64::NAN, false), Err("not a timestamp: NaN")),
                (
                    date_cell(f64::NEG_INFINITY, true),
                    Err("not a timestamp: -Infinity"),
                ),
                (date_cell(-3e8, false), Err("not a timestamp: -300000000")),
                // within range, but past the last year chrono holds
                (date_cell(9.9e7, false), Err("not a timestamp: 99000000")),
            ],
        );
        check(
            ColumnType::Date,
            &[(
                date_cell(-1e300, false),
                Err(&*format!("not a date: -1{}...", "0".repeat(58))),
            )],
        );
        check(
            ColumnType::Text,
            &[(date_cell(f64::INFINITY, false), Ok(Some("Infinity")))],
        );
        check(
            ColumnType::TimestampTz,
            &[
                (
                    date_cell(45000.5, false),
                    Ok(Some("2023-03-15 12:00:00+00:00")),
                ),
                (
                    text("2024-01-02 03:04:05"),
                    Ok(Some("2024-01-02 03:04:05+00:00")),
                ),
                (
                    text("2024-01-02T03:04:05+02:00"),
                    Ok(Some("2024-01-02 03:04:05+02:00")),
                ),
                (
                    text("2024-01-02 03:04:05-0530"),
                    Ok(Some("2024-01-02 03:04:05-05:30")),
                ),
                (
                    text("2024-01-02T03:04:05Z"),
                    Ok(Some("2024-01-02 03:04:05+00:00")),
                ),
                (
                    text("2024-01-02T03:04:05.5+01"),
                    Ok(Some("2024-01-02 03:04:05.500+01:00")),
                ),
            ],
        );
    }

    #[test]
    fn uuid_and_json_are_validated_before_they_are_sent() {
        check(
            ColumnType::Uuid,
            &[
                (
                    text("67E55044-10B1-426F-9247-BB680E5FE0C8"),
                    Ok(Some("67e55044-10b1-426f-9247-bb680e5fe0c8")),
                ),
                (text("not-a-uuid"), Err("not a uuid: not-a-uuid")),
                (Data::Float(1.0), Err("not a uuid: 1")),
            ],
        );
        check(
            ColumnType::Json,
            &[
                (text(r#"{"a": [1, 2]}"#), Ok(Some(r#"{"a": [1, 2]}"#))),
                (text("{oops"), Err("not valid JSON: {oops")),
                (Data::Float(2.5), Ok(Some("2.5"))),
                (Data::Bool(true), Ok(Some("true"))),
            ],
        );
    }

    #[test]
    fn other_types_get_the_cells_text() {
        check(
            ColumnType::Other,
            &[
                (text("{1,2,3}"), Ok(Some("{1,2,3}"))),
                (Data::Float(5.0), Ok(Some("5"))),
                (text("  "), Ok(None)),
                (Data::Error(CellErrorType::Ref), Err("excel error #REF!")),
            ],
        );
    }

    #[test]
    fn null_for_not_null_rejects_only_without_a_default() {
        let mut required = column(ColumnType::Text);
        required.not_null = true;
        let rejection = convert_cell(&Data::Empty, &required).unwrap_err();
        assert_eq!(rejection.reason, "null value in NOT NULL column");
        assert_eq!(
            convert_cell(&text("  "), &required),
            Ok(Some("  ".to_string()))
        );

        required.has_default = true;
        assert_eq!(convert_cell(&Data::Empty, &required), Ok(None));
    }

    #[test]
    fn long_values_are_cut_in_reasons() {
        let long = "x".repeat(30_000);
        let rejection = convert_cell(&text(&long), &column(ColumnType::BigInt)).unwrap_err();
        assert!(rejection.reason.len() < 100, "{}", rejection.reason);
    }

    #[test]
    fn durations_render_as_hours_minutes_seconds() {
        let duration = Data::DateTime(ExcelDateTime::new(1.5, ExcelDateTimeType::TimeDelta, false));
        assert_eq!(cell_text(&duration), "36:00:00");
        let broken = Data::DateTime(ExcelDateTime::new(
            f64::NAN,
            ExcelDateTimeType::TimeDelta,
            false,
        ));
        assert_eq!(cell_text(&broken), "NaN");
    }
}
