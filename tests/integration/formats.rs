//! Workbooks from real writers load the same rows: openpyxl, pandas, XlsxWriter, xlwt,
//! LibreOffice (.ods, .xls, .xlsx, .xlsm, .csv) and Python's csv module, all made by
//! tests/fixtures/make_fixtures.py (see tests/fixtures/README.md). The reader (calamine) and
//! the converter must not be tuned to the one writer the other tests use (rust_xlsxwriter).
//!
//! Loops over a fixture family collect every mismatch before failing, so one run names every
//! writer that misbehaves. The last test checks the contract's conversion table against a
//! typed table on the server, with a workbook written on the fly.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::path::Path;
use std::time::{Duration, Instant};

use rust_xlsxwriter::{ExcelDateTime, Format, Formula, Workbook};

use crate::util::{Run, TempDir, TestDb, fixture};

/// One row as `TestDb::rows` returns it.
type Row = Vec<Option<String>>;

fn row(cells: &[Option<&str>]) -> Row {
    cells.iter().map(|cell| cell.map(str::to_string)).collect()
}

/// Records a mismatch instead of failing at once.
fn check<T: PartialEq + Debug>(failures: &mut Vec<String>, what: &str, got: &T, expected: &T) {
    if got != expected {
        failures.push(format!(
            "{what}:\n    got      {got:?}\n    expected {expected:?}"
        ));
    }
}

fn fail_on(failures: &[String]) {
    assert!(
        failures.is_empty(),
        "{} mismatch(es):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Runs `importer run --format json` on a committed fixture.
fn import(db: &TestDb, name: &str, extra: &[&str]) -> Run {
    let path = fixture(name);
    let mut args = vec!["run", "--format", "json"];
    args.extend_from_slice(extra);
    args.push(path.to_str().expect("fixture paths are UTF-8"));
    db.importer(&args)
}

/// (total_records, success_count, error_count) of a run, or `None` when stdout is no JSON.
fn counts(run: &Run) -> Option<(u64, u64, u64)> {
    let stats: serde_json::Value = serde_json::from_str(run.stdout.trim()).ok()?;
    Some((
        stats["total_records"].as_u64()?,
        stats["success_count"].as_u64()?,
        stats["error_count"].as_u64()?,
    ))
}

/// Checks the exit code and the counts of a run; false when the run did not get that far.
fn check_run(
    failures: &mut Vec<String>,
    name: &str,
    run: &Run,
    code: i32,
    expected: (u64, u64, u64),
) -> bool {
    if run.code != code {
        failures.push(format!(
            "{name}: exit {} (expected {code}); stderr: {}",
            run.code,
            run.stderr.trim()
        ));
        return false;
    }
    check(
        failures,
        &format!("{name}: (total_records, success_count, error_count)"),
        &counts(run),
        &Some(expected),
    );
    true
}

// --- the dataset family: one logical sheet, written by every writer ------------------------

/// The long cell of row 3: 4,800 characters, a third of them outside Latin-1 (so .xls keeps
/// it as UTF-16 spread over CONTINUE records).
fn long_text() -> String {
    (0..600).map(|i| format!("[{i:04} \u{2713}]")).collect()
}

const DATASET_WORKBOOKS: [&str; 11] = [
    "dataset_openpyxl.xlsx",
    "dataset_openpyxl.xlsm",
    "dataset_pandas.xlsx",
    "dataset_xlsxwriter.xlsx",
    "dataset_xlsxwriter_constant_memory.xlsx",
    "dataset_xlwt.xls",
    "dataset_libreoffice.ods",
    "dataset_libreoffice.xls",
    "dataset_libreoffice.xlsx",
    "dataset_libreoffice.xlsm",
    "dataset_libreoffice_from_xlsx.ods",
];

const DATASET_CSVS: [&str; 2] = ["dataset_python_bom.csv", "dataset_libreoffice.csv"];

const DATASET_TYPED_TABLE: &str = "CREATE TABLE dataset (id bigint, name text, qty integer, \
     price double precision, phone text, active boolean, day date, moment timestamp, note text)";

const DATASET_TEXT_TABLE: &str = "CREATE TABLE dataset_text (id text, name text, qty text, \
     price text, phone text, active text, day text, moment text, note text)";

/// openpyxl writes a whitespace-only string as `<t>   </t>` without xml:space="preserve"
/// (its `whitespace()` helper sets it only when the text has non-space characters), and
/// calamine trims such text to "", which is an empty cell. The file itself no longer says
/// "   ", so these writers give NULL there.
fn loses_whitespace_only_strings(name: &str) -> bool {
    name.starts_with("dataset_openpyxl") || name == "dataset_pandas.xlsx"
}

/// What the typed table holds after any writer's dataset (quirks of the writer applied).
fn expected_typed_rows(name: &str) -> Vec<Row> {
    let long = long_text();
    let mut rows = vec![
        row(&[
            Some("1"),
            Some("  Alice  "),
            Some("3"),
            Some("3.25"),
            // contract: an integral float reaches a text column without ".0"
            Some("5551234"),
            Some("true"),
            Some("2024-02-29"),
            Some("2024-02-29 13:45:30"),
            // contract: the literal string "NULL" stays the text NULL
            Some("NULL"),
        ]),
        row(&[
            Some("2"),
            Some("Bob, \"the\" builder"),
            Some("0"),
            Some("-0.5"),
            Some("5550000"),
            Some("false"),
            Some("1999-12-31"),
            Some("2000-01-01 00:00:00"),
            // contract: a whitespace-only string stays as it is in a text column
            Some("   "),
        ]),
        row(&[
            Some("3"),
            Some("Z\u{fc}rich \u{2013} na\u{ef}ve caf\u{e9} \u{2713}"),
            Some("-7"),
            Some("1234567.125"),
            None,
            Some("true"),
            Some("1970-01-01"),
            Some("1970-01-01 08:00:00"),
            Some(&long),
        ]),
        // qty is whitespace-only: NULL for a non-text column; "" in note is an empty cell
        row(&[
            Some("4"),
            Some("line one\nline two"),
            None,
            Some("0.1"),
            Some("0"),
            None,
            None,
            None,
            None,
        ]),
    ];
    if loses_whitespace_only_strings(name) {
        rows[1][8] = None;
    }
    if name == "dataset_libreoffice.csv" {
        // LibreOffice 7.4 exports 08:00:00 (stored as 25569.333...) "as shown", and shows
        // it as 07:59:59: the file says 07:59:59
        rows[2][7] = Some("1970-01-01 07:59:59".to_string());
    }
    rows
}

/// What an all-text table holds after a workbook writer's dataset: the contract's text
/// rendering of each cell type.
fn expected_text_rows(name: &str) -> Vec<Row> {
    let mut rows = expected_typed_rows(name);
    // a datetime without a time part renders as a date
    rows[1][7] = Some("2000-01-01".to_string());
    // the whitespace-only qty stays as it is in a text column
    rows[3][2] = Some("   ".to_string());
    if loses_whitespace_only_strings(name) {
        rows[3][2] = None;
    }
    if name == "dataset_libreoffice_from_xlsx.ods" {
        // LibreOffice turns the source's t="b" cells into =TRUE()/=FALSE() formulas, and
        // .ods stores their results as office:value-type="float" 1 and 0: numbers
        rows[0][5] = Some("1".to_string());
        rows[1][5] = Some("0".to_string());
        rows[2][5] = Some("1".to_string());
    }
    rows
}

fn expected_inferred_types(name: &str) -> Vec<String> {
    let mut types = [
        "bigint",
        "text",
        // integers and a whitespace-only string
        "text",
        "double precision",
        // integral floats
        "bigint",
        "boolean",
        "date",
        "timestamp without time zone",
        "text",
    ]
    .map(str::to_string)
    .to_vec();
    if loses_whitespace_only_strings(name) {
        types[2] = "bigint".to_string();
    }
    if name == "dataset_libreoffice_from_xlsx.ods" {
        types[5] = "bigint".to_string();
    }
    types
}

const DATASET_TYPED_ROWS: &str = "SELECT id::text, name, qty::text, price::text, phone, \
     active::text, day::text, moment::text, note FROM dataset ORDER BY id";

const DATASET_TEXT_ROWS: &str = "SELECT id, name, qty, price, phone, active, day, moment, note \
     FROM dataset_text ORDER BY id::int";

fn column_types(db: &TestDb, table: &str) -> Vec<String> {
    db.rows(&format!(
        "SELECT data_type FROM information_schema.columns WHERE table_name = '{table}' \
         ORDER BY ordinal_position"
    ))
    .into_iter()
    .map(|mut columns| columns.remove(0).expect("data_type is not null"))
    .collect()
}

#[test]
fn every_writer_loads_the_same_typed_rows() {
    let mut failures = Vec::new();
    for name in DATASET_WORKBOOKS.iter().chain(&DATASET_CSVS) {
        let db = TestDb::new();
        db.execute(DATASET_TYPED_TABLE);
        let run = import(&db, name, &["--table", "dataset"]);
        if check_run(&mut failures, name, &run, 0, (4, 4, 0)) {
            check(
                &mut failures,
                &format!("{name}: rows"),
                &db.rows(DATASET_TYPED_ROWS),
                &expected_typed_rows(name),
            );
        }
    }
    fail_on(&failures);
}

#[test]
fn every_workbook_writer_renders_cells_the_same_in_text_columns() {
    let mut failures = Vec::new();
    for name in DATASET_WORKBOOKS {
        let db = TestDb::new();
        db.execute(DATASET_TEXT_TABLE);
        let run = import(&db, name, &["--table", "dataset_text"]);
        if check_run(&mut failures, name, &run, 0, (4, 4, 0)) {
            check(
                &mut failures,
                &format!("{name}: rows"),
                &db.rows(DATASET_TEXT_ROWS),
                &expected_text_rows(name),
            );
        }
    }
    fail_on(&failures);
}

#[test]
fn every_workbook_writer_gives_the_same_created_table() {
    let mut failures = Vec::new();
    for name in DATASET_WORKBOOKS {
        let db = TestDb::new();
        let run = import(&db, name, &["--table", "created"]);
        if check_run(&mut failures, name, &run, 0, (4, 4, 0)) {
            check(
                &mut failures,
                &format!("{name}: inferred column types"),
                &column_types(&db, "created"),
                &expected_inferred_types(name),
            );
        }
    }
    fail_on(&failures);
}

#[test]
fn csv_with_a_bom_keeps_quoted_commas_quotes_and_newlines() {
    let db = TestDb::new();
    let run = import(&db, "dataset_python_bom.csv", &["--table", "created"]);
    assert_eq!(run.code, 0, "{run:?}");
    // every CSV cell is a string: a created table is all text, the BOM is not in a name
    let columns = db.rows(
        "SELECT column_name, data_type FROM information_schema.columns \
         WHERE table_name = 'created' ORDER BY ordinal_position",
    );
    let names: Vec<_> = columns.iter().map(|column| column[0].clone()).collect();
    assert_eq!(
        names,
        row(&[
            Some("id"),
            Some("name"),
            Some("qty"),
            Some("price"),
            Some("phone"),
            Some("active"),
            Some("day"),
            Some("moment"),
            Some("note")
        ])
    );
    assert!(
        columns
            .iter()
            .all(|column| column[1].as_deref() == Some("text"))
    );
    assert_eq!(
        db.rows("SELECT name, qty, moment FROM created ORDER BY id::int"),
        vec![
            row(&[Some("  Alice  "), Some("3"), Some("2024-02-29 13:45:30")]),
            row(&[
                Some("Bob, \"the\" builder"),
                Some("0"),
                Some("2000-01-01 00:00:00")
            ]),
            row(&[
                Some("Z\u{fc}rich \u{2013} na\u{ef}ve caf\u{e9} \u{2713}"),
                Some("-7"),
                Some("1970-01-01 08:00:00")
            ]),
            row(&[Some("line one\nline two"), Some("   "), None]),
        ]
    );
}

// --- dates: the 1904 system, ISO date cells ------------------------------------------------

const EPOCH_1904_FIXTURES: [&str; 6] = [
    "epoch_1904_openpyxl.xlsx",
    "epoch_1904_xlsxwriter.xlsx",
    "epoch_1904_xlwt.xls",
    "epoch_1904_libreoffice.xlsx",
    "epoch_1904_libreoffice.xls",
    "epoch_1904_libreoffice.ods",
];

const DATES_TABLES: &str = "CREATE TABLE dates (id bigint, day date, moment timestamp); \
     CREATE TABLE dates_text (id bigint, day date, moment text)";

fn expected_dates() -> Vec<Row> {
    vec![
        row(&[
            Some("1"),
            Some("2024-02-29"),
            Some("2024-02-29 13:45:30"),
            Some("2024-02-29 13:45:30"),
        ]),
        // serial 0 of the 1904 system
        row(&[
            Some("2"),
            Some("1904-01-01"),
            Some("1904-01-01 06:00:00"),
            Some("1904-01-01 06:00:00"),
        ]),
        row(&[
            Some("3"),
            Some("1999-12-31"),
            Some("2000-01-01 00:00:00"),
            Some("2000-01-01"),
        ]),
    ]
}

/// Loads a dates fixture twice: `moment` into a timestamp and into a text column.
fn load_dates(failures: &mut Vec<String>, name: &str) {
    let db = TestDb::new();
    db.execute(DATES_TABLES);
    let typed = import(&db, name, &["--table", "dates"]);
    let text = import(&db, name, &["--table", "dates_text"]);
    if check_run(failures, name, &typed, 0, (3, 3, 0))
        && check_run(failures, name, &text, 0, (3, 3, 0))
    {
        let rows = db.rows(
            "SELECT d.id::text, d.day::text, d.moment::text, t.moment \
             FROM dates d JOIN dates_text t USING (id) ORDER BY id",
        );
        check(failures, &format!("{name}: rows"), &rows, &expected_dates());
    }
}

#[test]
fn a_1904_workbook_gives_the_right_dates_from_every_writer() {
    let mut failures = Vec::new();
    for name in EPOCH_1904_FIXTURES {
        load_dates(&mut failures, name);
    }
    fail_on(&failures);
}

#[test]
fn iso_8601_date_cells_load_as_dates() {
    // openpyxl with iso_dates=True writes <c t="d"><v>2024-02-29T13:45:30</v></c>
    let mut failures = Vec::new();
    load_dates(&mut failures, "iso_date_cells_openpyxl.xlsx");
    fail_on(&failures);
}

// --- error cells and formulas ----------------------------------------------------------------

const CELL_ERROR_FIXTURES: [&str; 6] = [
    "cell_errors_openpyxl.xlsx",
    "cell_errors_xlsxwriter.xlsx",
    "cell_errors_xlwt.xls",
    "cell_errors_libreoffice.xlsx",
    "cell_errors_libreoffice.xls",
    "cell_errors_libreoffice.ods",
];

/// The rejects file as (row_number, column, reason) lines, header checked; the cell
/// reference that ends each reason (`(Sheet1!C3)`, checked in conventions.rs) is cut off.
fn read_rejects(path: &Path) -> Vec<(String, String, String)> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .from_path(path)
        .expect("the rejects file exists");
    let header = reader
        .headers()
        .expect("the rejects file has a header")
        .clone();
    assert_eq!(
        header.iter().take(3).collect::<Vec<_>>(),
        ["row_number", "column", "reason"]
    );
    reader
        .records()
        .map(|record| {
            let record = record.expect("rejects lines are CSV");
            let reason = match record[2].rsplit_once(" (") {
                Some((reason, reference)) if reference.contains('!') => reason,
                _ => panic!("the reason ends with a cell reference: {:?}", &record[2]),
            };
            (
                record[0].to_string(),
                record[1].to_string(),
                reason.to_string(),
            )
        })
        .collect()
}

#[test]
fn error_cells_reject_their_row_from_every_writer() {
    let mut failures = Vec::new();
    for name in CELL_ERROR_FIXTURES {
        let db = TestDb::new();
        let dir = TempDir::new();
        let rejects = dir.path("rejects.csv");
        db.execute("CREATE TABLE cell_errors (id bigint, label text, value double precision)");
        let run = import(
            &db,
            name,
            &[
                "--table",
                "cell_errors",
                "--rejects",
                rejects.to_str().expect("temp paths are UTF-8"),
            ],
        );
        // contract: an Excel error cell rejects the row; the good rows are all in
        if !check_run(&mut failures, name, &run, 3, (6, 3, 3)) {
            continue;
        }
        check(
            &mut failures,
            &format!("{name}: rows"),
            &db.rows("SELECT id::text, label, value::text FROM cell_errors ORDER BY id"),
            &vec![
                row(&[Some("1"), Some("ok"), Some("1.5")]),
                row(&[Some("3"), Some("ok too"), Some("2")]),
                row(&[Some("6"), Some("last"), Some("3")]),
            ],
        );
        let line = |row_number: &str, column: &str, reason: &str| {
            (
                row_number.to_string(),
                column.to_string(),
                reason.to_string(),
            )
        };
        check(
            &mut failures,
            &format!("{name}: rejects"),
            &read_rejects(&rejects),
            &vec![
                line("3", "value", "excel error #DIV/0!"),
                line("5", "value", "excel error #N/A"),
                line("6", "label", "excel error #VALUE!"),
            ],
        );
    }
    fail_on(&failures);
}

const FORMULAS_TABLE: &str = "CREATE TABLE formulas (id bigint, number double precision, \
     text text, flag boolean, day date); \
     CREATE TABLE formulas_text (id bigint, number text, text text, flag boolean, day text)";

const FORMULA_ROWS: &str = "SELECT f.id::text, f.number::text, f.text, f.flag::text, \
     f.day::text, t.number, t.day FROM formulas f JOIN formulas_text t USING (id) ORDER BY id";

fn load_formulas(failures: &mut Vec<String>, name: &str) -> Option<Vec<Row>> {
    let db = TestDb::new();
    db.execute(FORMULAS_TABLE);
    let typed = import(&db, name, &["--table", "formulas"]);
    let text = import(&db, name, &["--table", "formulas_text"]);
    (check_run(failures, name, &typed, 0, (2, 2, 0))
        && check_run(failures, name, &text, 0, (2, 2, 0)))
    .then(|| db.rows(FORMULA_ROWS))
}

#[test]
fn formula_cells_give_their_cached_values_from_every_writer() {
    let mut failures = Vec::new();
    for name in [
        "formulas_xlsxwriter.xlsx",
        "formulas_libreoffice.xlsx",
        "formulas_libreoffice.xls",
        "formulas_libreoffice.ods",
    ] {
        if let Some(rows) = load_formulas(&mut failures, name) {
            check(
                &mut failures,
                &format!("{name}: rows"),
                &rows,
                &vec![
                    // =13/4, ="ab"&"cd", =1<2, =DATE(2024,2,29)
                    row(&[
                        Some("1"),
                        Some("3.25"),
                        Some("abcd"),
                        Some("true"),
                        Some("2024-02-29"),
                        Some("3.25"),
                        Some("2024-02-29"),
                    ]),
                    // =SUM(5551000,234), =REPT(" ",2)&"x", =AND(TRUE,FALSE), =DATE(1999,12,31)
                    row(&[
                        Some("2"),
                        Some("5551234"),
                        Some("  x"),
                        Some("false"),
                        Some("1999-12-31"),
                        Some("5551234"),
                        Some("1999-12-31"),
                    ]),
                ],
            );
        }
    }
    fail_on(&failures);
}

#[test]
fn formulas_without_a_cached_value_load_as_null() {
    // openpyxl writes <f> without <v>: there is no value to load, as if the cell were empty
    let mut failures = Vec::new();
    if let Some(rows) = load_formulas(&mut failures, "formulas_openpyxl_uncached.xlsx") {
        let empty = |id: &str| row(&[Some(id), None, None, None, None, None, None]);
        check(
            &mut failures,
            "formulas_openpyxl_uncached.xlsx: rows",
            &rows,
            &vec![empty("1"), empty("2")],
        );
    }
    fail_on(&failures);
}

// --- sheets whose extent is absurd -----------------------------------------------------------

/// Most a three-row sheet may take, whatever its declared or stray extent.
const QUICK: Duration = Duration::from_secs(10);

fn assert_small_sheet_loads_quickly(name: &str) {
    let db = TestDb::new();
    db.execute("CREATE TABLE small (id bigint, name text)");
    let started = Instant::now();
    let run = import(&db, name, &["--table", "small"]);
    let elapsed = started.elapsed();
    assert_eq!(run.code, 0, "{name}: {run:?}");
    assert_eq!(counts(&run), Some((3, 3, 0)), "{name}: {run:?}");
    assert_eq!(
        db.rows("SELECT id::text, name FROM small ORDER BY id"),
        vec![
            row(&[Some("1"), Some("a")]),
            row(&[Some("2"), Some("b")]),
            row(&[Some("3"), Some("c")]),
        ],
        "{name}"
    );
    assert!(elapsed < QUICK, "{name} took {elapsed:?} for three rows");
}

#[test]
fn an_absurd_declared_dimension_does_not_slow_an_xlsx_down() {
    // <dimension ref="A1:XFD1048576"/> over three rows
    assert_small_sheet_loads_quickly("dimension_absurd.xlsx");
}

#[test]
fn a_stray_cell_at_the_far_corner_of_an_xlsx_is_ignored() {
    // "stray" at XFD1048576 and a formatted empty cell at A1048575
    assert_small_sheet_loads_quickly("stray_cell_openpyxl.xlsx");
}

#[test]
fn a_stray_cell_at_the_far_corner_of_an_xls_is_ignored() {
    // "stray" at IV65536, the last cell of a BIFF8 sheet
    assert_small_sheet_loads_quickly("stray_cell_libreoffice.xls");
}

#[test]
fn a_stray_cell_at_the_far_corner_of_an_ods_is_ignored() {
    // "stray" at AMJ1048576, the last cell of a default LibreOffice sheet
    assert_small_sheet_loads_quickly("stray_cell_libreoffice.ods");
}

// --- the conversion table against the server --------------------------------------------------

/// A cell of the on-the-fly workbook.
#[derive(Debug, Clone, Copy)]
enum Cell {
    Empty,
    Text(&'static str),
    Number(f64),
    Boolean(bool),
    Date(u16, u8, u8),
    DateTime(u16, u8, u8, u16, u8, u8),
    /// A formula and its cached result.
    Formula(&'static str, &'static str),
}

/// What a case must leave behind.
#[derive(Debug, Clone, Copy)]
enum Expected {
    /// The row is in and the column's value, as `::text`, is this (`None`: NULL).
    Stored(Option<&'static str>),
    /// Refused client-side: the column at fault and the exact reason.
    Rejected(&'static str, &'static str),
    /// Refused by the server: part of the reason.
    RejectedByServer(&'static str),
}

struct Case {
    label: &'static str,
    column: &'static str,
    cell: Cell,
    expected: Expected,
}

const TYPED_COLUMNS: [&str; 19] = [
    "label", "small", "int", "big", "num", "flt", "dbl", "flag", "day", "ts", "tstz", "id", "doc",
    "docb", "code", "mood", "pos", "tags", "note",
];

const TYPED_TABLE: &str = "CREATE TYPE mood AS ENUM ('happy', 'sad'); \
     CREATE DOMAIN positive_int AS integer CHECK (VALUE > 0); \
     CREATE TABLE typed (label text NOT NULL, small smallint, int integer, big bigint, \
       num numeric, flt real, dbl double precision, flag boolean, day date, ts timestamp, \
       tstz timestamptz, id uuid, doc json, docb jsonb, code varchar(5), mood mood, \
       pos positive_int, tags int[], note text)";

fn conversion_cases() -> Vec<Case> {
    use Cell::*;
    use Expected::*;
    let case = |label, column, cell, expected| Case {
        label,
        column,
        cell,
        expected,
    };
    vec![
        case(
            "small from float",
            "small",
            Number(32767.0),
            Stored(Some("32767")),
        ),
        case(
            "small from text",
            "small",
            Text(" -12 "),
            Stored(Some("-12")),
        ),
        case(
            "small out of range",
            "small",
            Number(32768.0),
            Rejected("small", "out of range for smallint: 32768"),
        ),
        case(
            "int from float",
            "int",
            Number(2_147_483_647.0),
            Stored(Some("2147483647")),
        ),
        case(
            "int fraction",
            "int",
            Number(3.5),
            Rejected("int", "not an integer: 3.5"),
        ),
        case("int whitespace", "int", Text("   "), Stored(None)),
        case("int empty", "int", Empty, Stored(None)),
        case(
            "big from text",
            "big",
            Text("9223372036854775807"),
            Stored(Some("9223372036854775807")),
        ),
        case(
            "big from float",
            "big",
            Number(-9_007_199_254_740_992.0),
            Stored(Some("-9007199254740992")),
        ),
        case(
            "big not a number",
            "big",
            Text("abc"),
            Rejected("big", "not an integer: abc"),
        ),
        case(
            "big from formula",
            "big",
            Formula("=6*7", "42"),
            Stored(Some("42")),
        ),
        case("num from float", "num", Number(3.25), Stored(Some("3.25"))),
        case(
            "num keeps digits",
            "num",
            Text("12345678901234567890.123456789"),
            Stored(Some("12345678901234567890.123456789")),
        ),
        case(
            "num comma",
            "num",
            Text("12,5"),
            Rejected("num", "not a number: 12,5"),
        ),
        case("real", "flt", Number(0.1), Stored(Some("0.1"))),
        case(
            "double",
            "dbl",
            Number(1_234_567.125),
            Stored(Some("1234567.125")),
        ),
        case("double from text", "dbl", Text("1e3"), Stored(Some("1000"))),
        case(
            "double error cell",
            "dbl",
            Formula("=1/0", "#DIV/0!"),
            Rejected("dbl", "excel error #DIV/0!"),
        ),
        case("bool cell", "flag", Boolean(true), Stored(Some("true"))),
        case("bool yes", "flag", Text("Yes"), Stored(Some("true"))),
        case("bool n", "flag", Text("n"), Stored(Some("false"))),
        case("bool one", "flag", Number(1.0), Stored(Some("true"))),
        case("bool zero", "flag", Number(0.0), Stored(Some("false"))),
        case(
            "bool two",
            "flag",
            Number(2.0),
            Rejected("flag", "not a boolean: 2"),
        ),
        case(
            "bool maybe",
            "flag",
            Text("maybe"),
            Rejected("flag", "not a boolean: maybe"),
        ),
        case(
            "date cell",
            "day",
            Date(2024, 2, 29),
            Stored(Some("2024-02-29")),
        ),
        case(
            "date text",
            "day",
            Text("1999-12-31"),
            Stored(Some("1999-12-31")),
        ),
        case(
            "date with time",
            "day",
            DateTime(2024, 2, 29, 6, 0, 0),
            Rejected("day", "date has a time part: 2024-02-29 06:00:00"),
        ),
        case(
            "date other order",
            "day",
            Text("29/02/2024"),
            Rejected("day", "not a date (YYYY-MM-DD): 29/02/2024"),
        ),
        case(
            "ts cell",
            "ts",
            DateTime(2024, 2, 29, 13, 45, 30),
            Stored(Some("2024-02-29 13:45:30")),
        ),
        case(
            "ts date cell",
            "ts",
            Date(2024, 2, 29),
            Stored(Some("2024-02-29 00:00:00")),
        ),
        case(
            "ts iso text",
            "ts",
            Text("2024-01-02T03:04:05.25"),
            Stored(Some("2024-01-02 03:04:05.25")),
        ),
        case(
            "ts words",
            "ts",
            Text("yesterday"),
            Rejected("ts", "not a timestamp: yesterday"),
        ),
        case(
            "tstz cell is utc",
            "tstz",
            DateTime(2024, 2, 29, 13, 45, 30),
            Stored(Some("2024-02-29 13:45:30")),
        ),
        case(
            "tstz text is utc",
            "tstz",
            Text("2024-01-02 03:04:05"),
            Stored(Some("2024-01-02 03:04:05")),
        ),
        case(
            "tstz text offset",
            "tstz",
            Text("2024-01-02T03:04:05+02:00"),
            Stored(Some("2024-01-02 01:04:05")),
        ),
        case(
            "uuid",
            "id",
            Text("67E55044-10B1-426F-9247-BB680E5FE0C8"),
            Stored(Some("67e55044-10b1-426f-9247-bb680e5fe0c8")),
        ),
        case(
            "uuid bad",
            "id",
            Text("not-a-uuid"),
            Rejected("id", "not a uuid: not-a-uuid"),
        ),
        case(
            "json",
            "doc",
            Text(r#"{"a": [1, 2]}"#),
            Stored(Some(r#"{"a": [1, 2]}"#)),
        ),
        case(
            "jsonb",
            "docb",
            Text(r#"{"b":1,"a":2}"#),
            Stored(Some(r#"{"a": 2, "b": 1}"#)),
        ),
        case("json number", "docb", Number(2.5), Stored(Some("2.5"))),
        case(
            "json bad",
            "doc",
            Text("{oops"),
            Rejected("doc", "not valid JSON: {oops"),
        ),
        case("varchar fits", "code", Text("abcde"), Stored(Some("abcde"))),
        case(
            "varchar too long",
            "code",
            Text("abcdef"),
            RejectedByServer("too long"),
        ),
        case("enum", "mood", Text("happy"), Stored(Some("happy"))),
        case("enum bad", "mood", Text("angry"), RejectedByServer("angry")),
        case("domain from float", "pos", Number(5.0), Stored(Some("5"))),
        case(
            "domain check",
            "pos",
            Number(-1.0),
            RejectedByServer("positive_int"),
        ),
        case("array", "tags", Text("{1,2,3}"), Stored(Some("{1,2,3}"))),
        case("array bad", "tags", Text("1,2"), RejectedByServer("array")),
        case(
            "text integral float",
            "note",
            Number(5_551_234.0),
            Stored(Some("5551234")),
        ),
        case("text fraction", "note", Number(3.25), Stored(Some("3.25"))),
        case("text bool", "note", Boolean(false), Stored(Some("false"))),
        case(
            "text date",
            "note",
            Date(2024, 2, 29),
            Stored(Some("2024-02-29")),
        ),
        case(
            "text datetime",
            "note",
            DateTime(2024, 2, 29, 13, 45, 30),
            Stored(Some("2024-02-29 13:45:30")),
        ),
        case("text whitespace", "note", Text("   "), Stored(Some("   "))),
        case("text NULL", "note", Text("NULL"), Stored(Some("NULL"))),
        case(
            "text formula",
            "note",
            Formula(r#"="a"&"b""#, "ab"),
            Stored(Some("ab")),
        ),
        // no label: NULL for a NOT NULL column without a default
        case(
            "",
            "note",
            Text("orphan"),
            Rejected("label", "null value in NOT NULL column"),
        ),
    ]
}

/// Writes one row per case: its label in column A and its cell under its column.
fn write_conversion_workbook(path: &Path, cases: &[Case]) {
    let mut workbook = Workbook::new();
    let date_format = Format::new().set_num_format("yyyy-mm-dd");
    let datetime_format = Format::new().set_num_format("yyyy-mm-dd hh:mm:ss");
    let sheet = workbook.add_worksheet();
    for (column, name) in TYPED_COLUMNS.iter().enumerate() {
        sheet
            .write_string(0, column as u16, *name)
            .expect("header cell is written");
    }
    for (index, case) in cases.iter().enumerate() {
        let sheet_row = index as u32 + 1;
        if !case.label.is_empty() {
            sheet
                .write_string(sheet_row, 0, case.label)
                .expect("label is written");
        }
        let column = TYPED_COLUMNS
            .iter()
            .position(|name| *name == case.column)
            .expect("case names a typed column") as u16;
        let written = match case.cell {
            Cell::Empty => continue,
            Cell::Text(text) => sheet.write_string(sheet_row, column, text),
            Cell::Number(number) => sheet.write_number(sheet_row, column, number),
            Cell::Boolean(value) => sheet.write_boolean(sheet_row, column, value),
            Cell::Date(year, month, day) => sheet.write_datetime_with_format(
                sheet_row,
                column,
                ExcelDateTime::from_ymd(year, month, day).expect("valid date"),
                &date_format,
            ),
            Cell::DateTime(year, month, day, hour, minute, second) => sheet
                .write_datetime_with_format(
                    sheet_row,
                    column,
                    ExcelDateTime::from_ymd(year, month, day)
                        .and_then(|date| date.and_hms(hour, minute, second))
                        .expect("valid datetime"),
                    &datetime_format,
                ),
            Cell::Formula(formula, result) => {
                sheet.write_formula(sheet_row, column, Formula::new(formula).set_result(result))
            }
        };
        written.expect("cell is written");
    }
    workbook.save(path).expect("workbook is saved");
}

#[test]
fn typed_columns_convert_cells_as_the_contract_says() {
    let cases = conversion_cases();
    let dir = TempDir::new();
    let workbook = dir.path("typed.xlsx");
    write_conversion_workbook(&workbook, &cases);
    let stored = cases
        .iter()
        .filter(|case| matches!(case.expected, Expected::Stored(_)))
        .count() as u64;
    let total = cases.len() as u64;

    let mut failures = Vec::new();
    for method in ["sequential", "concurrent", "batch", "copy"] {
        let db = TestDb::new();
        db.execute(TYPED_TABLE);
        let rejects = dir.path(&format!("rejects-{method}.csv"));
        let run = db.importer(&[
            "run",
            "--format",
            "json",
            "--method",
            method,
            "--batch-size",
            "7",
            "--rejects",
            rejects.to_str().expect("temp paths are UTF-8"),
            workbook.to_str().expect("temp paths are UTF-8"),
        ]);
        if !check_run(
            &mut failures,
            method,
            &run,
            3,
            (total, stored, total - stored),
        ) {
            continue;
        }
        let rejected: BTreeMap<u32, (String, String)> = read_rejects(&rejects)
            .into_iter()
            .map(|(row_number, column, reason)| {
                (
                    row_number.parse().expect("row_number is a number"),
                    (column, reason),
                )
            })
            .collect();
        for (index, case) in cases.iter().enumerate() {
            let row_number = index as u32 + 2;
            let what = format!(
                "{method}: row {row_number} ({:?}, {})",
                case.label, case.column
            );
            match case.expected {
                Expected::Stored(value) => {
                    let expression = match case.column {
                        "tstz" => "(tstz AT TIME ZONE 'UTC')::text".to_string(),
                        column => format!("{column}::text"),
                    };
                    let got = db.rows(&format!(
                        "SELECT {expression} FROM typed WHERE label = '{}'",
                        case.label
                    ));
                    check(
                        &mut failures,
                        &what,
                        &got,
                        &vec![vec![value.map(str::to_string)]],
                    );
                    check(&mut failures, &what, &rejected.get(&row_number), &None);
                }
                Expected::Rejected(column, reason) => check(
                    &mut failures,
                    &what,
                    &rejected.get(&row_number),
                    &Some(&(column.to_string(), reason.to_string())),
                ),
                Expected::RejectedByServer(part) => match rejected.get(&row_number) {
                    Some((_, reason)) if reason.contains(part) => {}
                    other => failures.push(format!(
                        "{what}: expected a server rejection mentioning {part:?}, got {other:?}"
                    )),
                },
            }
        }
    }
    fail_on(&failures);
}
