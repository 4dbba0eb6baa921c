//! The shape of the target: header folding, header-to-column mapping, column types and the
//! type inference used to create a missing table.
//!
//! Pure: no SQL and no I/O. `sink` reads the catalog into [`Column`]s and writes the
//! `CREATE TABLE`; `convert` turns cells into values by [`ColumnType`].

use std::collections::HashMap;
use std::path::Path;

use anyhow::bail;
use calamine::Data;

use crate::message::quoted;

/// How a column's values are validated and rendered client-side (contract: conversion table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    /// text, varchar, char
    Text,
    /// smallint
    SmallInt,
    /// integer
    Integer,
    /// bigint
    BigInt,
    /// numeric
    Numeric,
    /// real, double precision
    Float,
    /// boolean
    Boolean,
    /// date
    Date,
    /// timestamp without time zone
    Timestamp,
    /// timestamp with time zone
    TimestampTz,
    /// uuid
    Uuid,
    /// json, jsonb
    Json,
    /// Anything else (domains, arrays, enums, ...): the cell's text, cast by the server.
    Other,
}

impl ColumnType {
    /// Classifies a column by its `pg_type.typname` (domains and arrays keep their own name).
    pub fn from_type_name(type_name: &str) -> ColumnType {
        match type_name {
            "text" | "varchar" | "bpchar" => ColumnType::Text,
            "int2" => ColumnType::SmallInt,
            "int4" => ColumnType::Integer,
            "int8" => ColumnType::BigInt,
            "numeric" => ColumnType::Numeric,
            "float4" | "float8" => ColumnType::Float,
            "bool" => ColumnType::Boolean,
            "date" => ColumnType::Date,
            "timestamp" => ColumnType::Timestamp,
            "timestamptz" => ColumnType::TimestampTz,
            "uuid" => ColumnType::Uuid,
            "json" | "jsonb" => ColumnType::Json,
            _ => ColumnType::Other,
        }
    }

    /// Whether the server takes text for this column without an explicit cast.
    pub fn is_text(self) -> bool {
        self == ColumnType::Text
    }
}

/// One column of the target table, as read from the catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// The column's name, unquoted.
    pub name: String,
    /// How values are converted client-side.
    pub column_type: ColumnType,
    /// `format_type(atttypid, atttypmod)`: the SQL spelling used in casts.
    pub sql_type: String,
    /// `NOT NULL` is declared.
    pub not_null: bool,
    /// A default (or identity/generated value) exists.
    pub has_default: bool,
    /// The default expression (`pg_get_expr`), used when a NOT NULL column gets NULL.
    pub default_sql: Option<String>,
}

/// Folds a header cell the contract's way: trim, runs outside [A-Za-z0-9] to one '_',
/// '_' stripped at the ends, lowercase ("Phone Number " -> phone_number, "E-Mail" -> e_mail).
pub fn fold_header(cell: &str) -> String {
    let mut folded = String::with_capacity(cell.len());
    let mut pending_separator = false;
    for ch in cell.trim().chars() {
        if ch.is_ascii_alphanumeric() {
            if pending_separator && !folded.is_empty() {
                folded.push('_');
            }
            pending_separator = false;
            folded.push(ch.to_ascii_lowercase());
        } else {
            pending_separator = true;
        }
    }
    folded
}

/// The default table name: the file's stem, lowercased, runs outside [a-z0-9_] folded to '_',
/// and '_' trimmed from both ends as header folding does ("Q3 Sales (final).xlsx" ->
/// q3_sales_final). Empty when nothing of the stem survives: the caller asks for --table.
pub fn default_table_name(path: &Path) -> String {
    let stem = path
        .file_stem()
        .map(|stem| stem.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let mut name = String::with_capacity(stem.len());
    let mut in_run = false;
    for ch in stem.chars() {
        if ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '_' {
            name.push(ch);
            in_run = false;
        } else if !in_run {
            name.push('_');
            in_run = true;
        }
    }
    name.trim_matches('_').to_string()
}

/// Checks the header cells and folds them: fatal on an empty cell inside the header's width
/// or two cells that fold to the same name. Returns the folded names in sheet order.
pub fn fold_header_row(header: &[String]) -> anyhow::Result<Vec<String>> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut folded_names = Vec::with_capacity(header.len());
    for (sheet_column, cell) in header.iter().enumerate() {
        let folded = fold_header(cell);
        if folded.is_empty() {
            if cell.trim().is_empty() {
                bail!(
                    "header cell {} is empty; every column up to the last header cell needs a name",
                    column_letter(sheet_column)
                );
            }
            bail!(
                "header cell {} ({}) has no letters or digits to name a column",
                column_letter(sheet_column),
                quoted(cell)
            );
        }
        if let Some(first) = seen.insert(folded.clone(), sheet_column) {
            bail!(
                "header cells {} ({}) and {} ({}) both fold to {}; rename one",
                column_letter(first),
                quoted(&header[first]),
                column_letter(sheet_column),
                quoted(cell),
                quoted(&folded)
            );
        }
        folded_names.push(folded);
    }
    Ok(folded_names)
}

/// Maps each header cell onto a table column. A column whose name is exactly the cell (case
/// and spaces included) comes first; else the one column whose folded name is the cell's
/// folded name. Returns, per sheet column, the index into `columns`. Fatal on a cell that
/// matches nothing, and on one whose folded name matches two columns (`Phone Number` and
/// `PHONE-NUMBER` both fold to `phone_number`): guessing would fill the wrong one silently.
pub fn map_header(
    header: &[String],
    columns: &[Column],
    table_name: &str,
) -> anyhow::Result<Vec<usize>> {
    let folded_names = fold_header_row(header)?;
    let mut by_folded: HashMap<String, Vec<usize>> = HashMap::new();
    for (column_index, column) in columns.iter().enumerate() {
        by_folded
            .entry(fold_header(&column.name))
            .or_default()
            .push(column_index);
    }
    folded_names
        .iter()
        .zip(header)
        .map(|(folded, cell)| {
            if let Some(exact) = columns.iter().position(|column| column.name == *cell) {
                return Ok(exact);
            }
            match by_folded.get(folded).map(Vec::as_slice) {
                Some([only]) => Ok(*only),
                Some([first, second, ..]) => Err(anyhow::anyhow!(
                    "header {} (as {}) matches two columns of table {table_name}, {} and {}; rename the header cell to one of them exactly",
                    quoted(cell),
                    quoted(folded),
                    quoted(&columns[*first].name),
                    quoted(&columns[*second].name)
                )),
                _ => {
                    let names: Vec<String> = columns.iter().map(|c| quoted(&c.name)).collect();
                    Err(anyhow::anyhow!(
                        "header {} (as {}) matches no column of table {table_name} (columns: {})",
                        quoted(cell),
                        quoted(folded),
                        names.join(", ")
                    ))
                }
            }
        })
        .collect()
}

/// Spreadsheet column letters for a 0-based column index (0 -> A, 26 -> AA).
pub fn column_letter(sheet_column: usize) -> String {
    let mut letters = Vec::new();
    let mut remaining = sheet_column + 1;
    while remaining > 0 {
        let digit = (remaining - 1) % 26;
        letters.push(b'A' + digit as u8);
        remaining = (remaining - 1) / 26;
    }
    letters.reverse();
    String::from_utf8(letters).expect("column letters are ASCII")
}

/// The type a created column gets (contract: "Creating a missing table").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InferredType {
    /// All integers or integral floats.
    BigInt,
    /// All numbers.
    Double,
    /// All booleans.
    Boolean,
    /// All date cells without a time part.
    Date,
    /// All date cells.
    Timestamp,
    /// Anything else, or all empty.
    Text,
}

impl InferredType {
    /// The column a created table would have: what `--dry-run` maps onto when the table
    /// does not exist yet.
    pub fn column(self, name: &str) -> Column {
        let column_type = match self {
            InferredType::BigInt => ColumnType::BigInt,
            InferredType::Double => ColumnType::Float,
            InferredType::Boolean => ColumnType::Boolean,
            InferredType::Date => ColumnType::Date,
            InferredType::Timestamp => ColumnType::Timestamp,
            InferredType::Text => ColumnType::Text,
        };
        Column {
            name: name.to_string(),
            column_type,
            sql_type: self.sql_type().to_string(),
            not_null: false,
            has_default: false,
            default_sql: None,
        }
    }

    /// The SQL spelling used in `CREATE TABLE`.
    pub fn sql_type(self) -> &'static str {
        match self {
            InferredType::BigInt => "bigint",
            InferredType::Double => "double precision",
            InferredType::Boolean => "boolean",
            InferredType::Date => "date",
            InferredType::Timestamp => "timestamp",
            InferredType::Text => "text",
        }
    }
}

/// What the non-empty cells of one column have looked like so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Seen {
    #[default]
    Nothing,
    Integers,
    Numbers,
    Booleans,
    Dates,
    DateTimes,
    Mixed,
}

/// Infers one type per column over every data row, ignoring empty cells.
#[derive(Debug, Clone)]
pub struct TypeInference {
    seen: Vec<Seen>,
}

impl TypeInference {
    /// Starts inference for `column_count` columns.
    pub fn new(column_count: usize) -> Self {
        TypeInference {
            seen: vec![Seen::default(); column_count],
        }
    }

    /// Takes one data row into account (cells past the column count are ignored).
    pub fn observe_row(&mut self, cells: &[Data]) {
        for (seen, cell) in self.seen.iter_mut().zip(cells) {
            let kind = match classify(cell) {
                Some(kind) => kind,
                None => continue,
            };
            *seen = merge(*seen, kind);
        }
    }

    /// The inferred types, one per column.
    pub fn finish(&self) -> Vec<InferredType> {
        self.seen
            .iter()
            .map(|seen| match seen {
                Seen::Integers => InferredType::BigInt,
                Seen::Numbers => InferredType::Double,
                Seen::Booleans => InferredType::Boolean,
                Seen::Dates => InferredType::Date,
                Seen::DateTimes => InferredType::Timestamp,
                Seen::Nothing | Seen::Mixed => InferredType::Text,
            })
            .collect()
    }
}

/// The inference class of one cell; `None` for cells that do not vote (empty).
fn classify(cell: &Data) -> Option<Seen> {
    match cell {
        Data::Empty => None,
        Data::String(text) if text.is_empty() => None,
        Data::Int(_) => Some(Seen::Integers),
        Data::Float(value) if is_i64(*value) => Some(Seen::Integers),
        Data::Float(_) => Some(Seen::Numbers),
        Data::Bool(_) => Some(Seen::Booleans),
        Data::DateTime(_) | Data::DateTimeIso(_) => match crate::dates::cell_datetime(cell) {
            Some(datetime) if datetime.time() == chrono::NaiveTime::MIN => Some(Seen::Dates),
            Some(_) => Some(Seen::DateTimes),
            None => Some(Seen::Mixed),
        },
        _ => Some(Seen::Mixed),
    }
}

fn merge(seen: Seen, kind: Seen) -> Seen {
    match (seen, kind) {
        (Seen::Nothing, kind) => kind,
        (seen, kind) if seen == kind => seen,
        (Seen::Integers | Seen::Numbers, Seen::Integers | Seen::Numbers) => Seen::Numbers,
        (Seen::Dates | Seen::DateTimes, Seen::Dates | Seen::DateTimes) => Seen::DateTimes,
        _ => Seen::Mixed,
    }
}

/// Whether a float holds an integral value that fits `bigint`.
pub fn is_i64(value: f64) -> bool {
    // 2^63 is exactly representable; i64::MAX is not, so compare against 2^63 itself
    value.fract() == 0.0
        && (-9_223_372_036_854_775_808.0..9_223_372_036_854_775_808.0).contains(&value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text_column(name: &str) -> Column {
        Column {
            name: name.to_string(),
            column_type: ColumnType::Text,
            sql_type: "text".to_string(),
            not_null: false,
            has_default: false,
            default_sql: None,
        }
    }

    #[test]
    fn fold_header_follows_the_contract_examples() {
        let cases = [
            ("Phone Number ", "phone_number"),
            ("E-Mail", "e_mail"),
            ("  Name", "name"),
            ("__id__", "id"),
            ("Q3 -- Sales (EUR)", "q3_sales_eur"),
            ("Café", "caf"),
            ("already_folded", "already_folded"),
            ("ABC", "abc"),
            ("2024", "2024"),
            ("", ""),
            ("   ", ""),
            ("---", ""),
        ];
        for (cell, expected) in cases {
            assert_eq!(fold_header(cell), expected, "folding {cell:?}");
        }
    }

    #[test]
    fn default_table_name_folds_the_stem() {
        let cases = [
            ("Q3 Sales.xlsx", "q3_sales"),
            ("dir/businesses.xlsx", "businesses"),
            ("My  Report--2024.ods", "my_report_2024"),
            ("already_ok.csv", "already_ok"),
            ("Ünïcode.xlsx", "n_code"),
            ("Q3 Sales (final).xlsx", "q3_sales_final"),
            ("(draft) report.csv", "draft_report"),
            ("__private__.csv", "private"),
            ("---.csv", ""),
            ("Ärger.xlsx", "rger"),
        ];
        for (path, expected) in cases {
            assert_eq!(default_table_name(Path::new(path)), expected, "{path}");
        }
    }

    #[test]
    fn column_letters_are_spreadsheet_letters() {
        assert_eq!(column_letter(0), "A");
        assert_eq!(column_letter(25), "Z");
        assert_eq!(column_letter(26), "AA");
        assert_eq!(column_letter(16383), "XFD");
    }

    #[test]
    fn map_header_matches_case_insensitively_after_folding() {
        let columns = vec![
            text_column("name"),
            text_column("phone_number"),
            text_column("e_mail"),
        ];
        let header: Vec<String> = ["E-Mail", "NAME", "Phone Number "]
            .map(String::from)
            .to_vec();
        assert_eq!(map_header(&header, &columns, "t").unwrap(), vec![2, 0, 1]);
    }

    #[test]
    fn map_header_prefers_an_exact_name_and_refuses_two_folded_matches() {
        let columns = vec![
            text_column("Phone Number"),
            text_column("PHONE-NUMBER"),
            text_column("name"),
        ];
        let cases: [(&str, Result<usize, &str>); 5] = [
            ("PHONE-NUMBER", Ok(1)),
            ("Phone Number", Ok(0)),
            ("name", Ok(2)),
            (" Name ", Ok(2)),
            ("phone number", Err("matches two columns")),
        ];
        for (cell, expected) in cases {
            let mapped = map_header(&[cell.to_string()], &columns, "t");
            match expected {
                Ok(position) => assert_eq!(mapped.unwrap(), vec![position], "{cell:?}"),
                Err(wanted) => {
                    let message = mapped.unwrap_err().to_string();
                    assert!(
                        message.contains(wanted)
                            && message.contains("\"Phone Number\"")
                            && message.contains("\"PHONE-NUMBER\""),
                        "{cell:?}: {message}"
                    );
                }
            }
        }
        // an exact match is case- and space-sensitive
        let padded = map_header(&["Phone Number ".to_string()], &columns, "t");
        assert!(
            padded.is_err(),
            "\"Phone Number \" is not exact: it folds to both"
        );
    }

    #[test]
    fn map_header_rejects_unknown_empty_and_duplicate_cells() {
        let columns = vec![text_column("name"), text_column("city")];
        let unknown = map_header(&["Name".into(), "Zip".into()], &columns, "t").unwrap_err();
        let message = unknown.to_string();
        assert!(
            message.contains("\"Zip\"") && message.contains("\"city\""),
            "{message}"
        );

        let empty = map_header(&["Name".into(), "".into(), "City".into()], &columns, "t");
        assert!(empty.unwrap_err().to_string().contains("B is empty"));

        let duplicate = map_header(&["Name".into(), "NAME ".into()], &columns, "t");
        assert!(duplicate.unwrap_err().to_string().contains("both fold"));
    }

    #[test]
    fn inference_follows_the_contract() {
        use calamine::{ExcelDateTime, ExcelDateTimeType};
        let date = Data::DateTime(ExcelDateTime::new(
            45000.0,
            ExcelDateTimeType::DateTime,
            false,
        ));
        let datetime = Data::DateTime(ExcelDateTime::new(
            45000.5,
            ExcelDateTimeType::DateTime,
            false,
        ));
        let rows = vec![
            vec![
                Data::Float(1.0),
                Data::Float(1.5),
                Data::Bool(true),
                date.clone(),
                date.clone(),
                Data::Empty,
                Data::Int(3),
                Data::String("x".into()),
            ],
            vec![
                Data::Int(2),
                Data::Int(2),
                Data::Bool(false),
                date.clone(),
                datetime,
                Data::String(String::new()),
                Data::Float(1.0),
                Data::Float(2.0),
            ],
            vec![
                Data::Empty,
                Data::Empty,
                Data::Empty,
                Data::Empty,
                Data::Empty,
                Data::Empty,
                Data::Float(9.223_372_036_854_776e18),
                Data::Empty,
            ],
        ];
        let mut inference = TypeInference::new(8);
        for row in &rows {
            inference.observe_row(row);
        }
        assert_eq!(
            inference.finish(),
            vec![
                InferredType::BigInt,
                InferredType::Double,
                InferredType::Boolean,
                InferredType::Date,
                InferredType::Timestamp,
                InferredType::Text,
                InferredType::Double,
                InferredType::Text,
            ]
        );
    }

    #[test]
    fn is_i64_draws_the_line_at_2_pow_63() {
        assert!(is_i64(-9_223_372_036_854_775_808.0));
        assert!(!is_i64(9_223_372_036_854_775_808.0));
        assert!(is_i64(-0.0));
        assert!(!is_i64(f64::NAN));
        assert!(!is_i64(f64::INFINITY));
        assert!(!is_i64(0.5));
    }
}
