//! Rejected rows: the `--rejects` CSV file and `--max-errors`, for every method.

use std::path::Path;

use crate::util::{Cell, Run, TempDir, TestDb, fatal_error_line, write_workbook};

/// Runs `check` once per method, as one test each: `<check>::sequential`, ...
macro_rules! for_each_method {
    ($check:ident) => {
        mod $check {
            #[test]
            fn sequential() {
                super::$check("sequential");
            }
            #[test]
            fn concurrent() {
                super::$check("concurrent");
            }
            #[test]
            fn batch() {
                super::$check("batch");
            }
            #[test]
            fn copy() {
                super::$check("copy");
            }
        }
    };
}

for_each_method!(
    rejects_file_has_one_line_per_rejected_row_with_row_number_column_reason_and_cells
);
for_each_method!(max_errors_passed_stops_with_exit_1_and_still_prints_the_stats);
for_each_method!(max_errors_not_passed_exits_3_with_every_row_processed);

fn path_str(path: &Path) -> &str {
    path.to_str().expect("temp paths are UTF-8")
}

/// Every record of a CSV file, the header line included.
fn read_csv_records(path: &Path) -> Vec<Vec<String>> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_path(path)
        .unwrap_or_else(|error| panic!("rejects file {} opens: {error}", path.display()));
    reader
        .records()
        .map(|record| {
            record
                .expect("rejects file is valid CSV")
                .iter()
                .map(str::to_string)
                .collect()
        })
        .collect()
}

/// (total_records, success_count, error_count) of a `--format json` run.
fn counts(run: &Run) -> (u64, u64, u64) {
    let stats = run.json();
    let field = |name: &str| {
        stats[name]
            .as_u64()
            .unwrap_or_else(|| panic!("{name} in {stats}"))
    };
    (
        field("total_records"),
        field("success_count"),
        field("error_count"),
    )
}

const PEOPLE_TABLE: &str = "CREATE TABLE people (name text NOT NULL, \
     age integer CONSTRAINT age_not_negative CHECK (age >= 0), note text)";

fn rejects_file_has_one_line_per_rejected_row_with_row_number_column_reason_and_cells(
    method: &str,
) {
    let dir = TempDir::new();
    let workbook = dir.path("people.xlsx");
    write_workbook(
        &workbook,
        &[(
            "Sheet1",
            vec![
                vec!["Name".into(), "Age".into(), "Note".into()],
                vec!["ann".into(), 30.0.into(), "ok".into()],
                // row 3: "abc" cannot become an integer (client-side rejection)
                vec!["bob".into(), "abc".into(), "conv".into()],
                vec![],
                // row 5: the server's check constraint refuses -5
                vec!["cy".into(), (-5.0).into(), "check, \"quoted\"".into()],
                vec!["dee".into(), 41.0.into(), "ok".into()],
                // row 7: no name for a NOT NULL column without a default
                vec![Cell::Empty, 50.0.into(), "no name".into()],
            ],
        )],
    );
    let db = TestDb::new();
    db.execute(PEOPLE_TABLE);
    let rejects = dir.path("rejects.csv");
    let run = db.importer(&[
        "run",
        "-m",
        method,
        "-b",
        "10",
        "--format",
        "json",
        "--rejects",
        path_str(&rejects),
        path_str(&workbook),
    ]);
    assert_eq!(run.code, 3, "{run:?}");
    assert_eq!(counts(&run), (5, 2, 3), "{run:?}");
    assert_eq!(
        db.rows("SELECT name FROM people ORDER BY name"),
        vec![vec![Some("ann".to_string())], vec![Some("dee".to_string())]]
    );

    let text = std::fs::read_to_string(&rejects).expect("rejects file is written");
    assert_eq!(
        text.lines().next(),
        Some("row_number,column,reason,Name,Age,Note"),
        "{text}"
    );
    let mut records = read_csv_records(&rejects);
    let mut rejected = records.split_off(1);
    assert_eq!(rejected.len(), 3, "one line per rejected row\n{text}");
    rejected.sort_by_key(|record| record[0].parse::<u32>().unwrap_or(u32::MAX));
    for record in &rejected {
        assert_eq!(
            record.len(),
            6,
            "row, column, reason and 3 cells: {record:?}"
        );
        assert!(!record[2].is_empty(), "a reason is given: {record:?}");
    }

    let conversion = &rejected[0];
    assert_eq!(conversion[0], "3", "1-based sheet row number\n{text}");
    assert!(
        conversion[1].eq_ignore_ascii_case("age"),
        "names the column\n{text}"
    );
    assert!(
        conversion[2].contains("abc"),
        "reason quotes the value\n{text}"
    );
    assert_eq!(conversion[3..], ["bob", "abc", "conv"], "{text}");

    let server = &rejected[1];
    assert_eq!(
        server[0], "5",
        "blank row 4 still counts in the numbering\n{text}"
    );
    assert!(
        server[1].is_empty() || server[1] == "age",
        "empty or server-given column\n{text}"
    );
    assert!(
        server[2].contains("age_not_negative"),
        "the server's reason names the constraint\n{text}"
    );
    assert_eq!(server[3..], ["cy", "-5", "check, \"quoted\""], "{text}");

    let not_null = &rejected[2];
    assert_eq!(not_null[0], "7", "{text}");
    assert!(not_null[1].eq_ignore_ascii_case("name"), "{text}");
    assert_eq!(not_null[3..], ["", "50", "no name"], "{text}");
}

/// Data rows; every 100th row from index 7 has a non-integer age (client-side rejection),
/// every 100th from index 57 a negative one (server-side). 60 bad rows in all.
const ROW_COUNT: usize = 3000;
const BAD_ROW_COUNT: u64 = 60;

/// Writes the file and returns the sheet row numbers of its bad rows.
fn write_people_with_bad_rows(path: &Path) -> Vec<u32> {
    let mut text = String::from("name,age\n");
    let mut bad_rows = Vec::new();
    for index in 0..ROW_COUNT {
        let age = match index % 100 {
            7 => "x".to_string(),
            57 => "-1".to_string(),
            _ => (index % 80).to_string(),
        };
        if matches!(index % 100, 7 | 57) {
            // header is row 1, data index 0 is row 2
            bad_rows.push(index as u32 + 2);
        }
        text.push_str(&format!("person{index},{age}\n"));
    }
    std::fs::write(path, text).unwrap();
    assert_eq!(bad_rows.len() as u64, BAD_ROW_COUNT);
    bad_rows
}

fn import_with_max_errors(method: &str, max_errors: u64) -> (TestDb, Run, Vec<u32>, Vec<u32>) {
    let dir = TempDir::new();
    let csv = dir.path("people.csv");
    let bad_rows = write_people_with_bad_rows(&csv);
    let db = TestDb::new();
    db.execute(PEOPLE_TABLE);
    let rejects = dir.path("rejects.csv");
    let max_errors = max_errors.to_string();
    let run = db.importer(&[
        "run",
        "-m",
        method,
        "-b",
        "100",
        "-w",
        "2",
        "--max-errors",
        &max_errors,
        "--format",
        "json",
        "--rejects",
        path_str(&rejects),
        path_str(&csv),
    ]);
    let records = read_csv_records(&rejects);
    assert_eq!(
        records[0],
        ["row_number", "column", "reason", "name", "age"]
    );
    let rejected_rows: Vec<u32> = records[1..]
        .iter()
        .map(|record| record[0].parse().expect("row_number is a number"))
        .collect();
    (db, run, bad_rows, rejected_rows)
}

fn max_errors_passed_stops_with_exit_1_and_still_prints_the_stats(method: &str) {
    let (db, run, bad_rows, rejected_rows) = import_with_max_errors(method, 5);
    let line = fatal_error_line(&run);
    assert!(line.contains("--max-errors"), "{line}");
    let (total, success, error) = counts(&run);
    assert_eq!(success + error, total, "{run:?}");
    assert!(
        error > 5,
        "stopped because more than 5 were rejected: {run:?}"
    );
    assert!(total <= ROW_COUNT as u64, "{run:?}");
    assert_eq!(
        db.count("people"),
        success as i64,
        "success_count rows are in the table\n{run:?}"
    );
    assert_eq!(
        rejected_rows.len() as u64,
        error,
        "every counted rejection is in the rejects file\n{run:?}"
    );
    for row_number in &rejected_rows {
        assert!(
            bad_rows.contains(row_number),
            "row {row_number} is not a bad row"
        );
    }
}

fn max_errors_not_passed_exits_3_with_every_row_processed(method: &str) {
    let (db, run, bad_rows, mut rejected_rows) = import_with_max_errors(method, BAD_ROW_COUNT);
    assert_eq!(
        run.code, 3,
        "exactly --max-errors rejections do not stop the run\n{run:?}"
    );
    assert!(
        !run.stderr.lines().any(|line| line.starts_with("error")),
        "{run:?}"
    );
    let good = ROW_COUNT as u64 - BAD_ROW_COUNT;
    assert_eq!(
        counts(&run),
        (ROW_COUNT as u64, good, BAD_ROW_COUNT),
        "{run:?}"
    );
    assert_eq!(db.count("people"), good as i64);
    rejected_rows.sort_unstable();
    assert_eq!(rejected_rows, bad_rows);
}
