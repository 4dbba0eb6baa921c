//! The command line as a user meets it: exit codes, what goes to stdout and stderr, the
//! fatal errors and their one-line messages, and the flags that pick the sheet, the header
//! row and the table.

use std::path::Path;
use std::process::Command;

use crate::util::{Cell, TempDir, TestDb, fatal_error_line, run_importer, write_workbook};

/// The contract's ImportStats fields, in its order.
const STATS_FIELDS: [&str; 10] = [
    "method",
    "file",
    "table",
    "total_records",
    "success_count",
    "error_count",
    "duration_seconds",
    "records_per_second",
    "workers",
    "batch_size",
];

fn text_rows(rows: &[&[&str]]) -> Vec<Vec<Cell>> {
    rows.iter()
        .map(|row| {
            row.iter()
                .map(|text| {
                    if text.is_empty() {
                        Cell::Empty
                    } else {
                        Cell::from(*text)
                    }
                })
                .collect()
        })
        .collect()
}

fn some(values: &[&str]) -> Vec<Option<String>> {
    values.iter().map(|value| Some(value.to_string())).collect()
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("temp paths are UTF-8")
}

/// Whether `relation` (as SQL text, quoted as needed) exists.
fn table_exists(db: &TestDb, relation: &str) -> bool {
    let literal = relation.replace('\'', "''");
    db.scalar(&format!("SELECT to_regclass('{literal}')::text"))
        .is_some()
}

// ---- exit codes and stdout -------------------------------------------------------------

#[test]
fn exit_0_when_every_row_is_in_and_json_stdout_is_one_object_with_the_contract_fields() {
    let dir = TempDir::new();
    let csv = dir.path("people.csv");
    std::fs::write(&csv, "name,age\nann,30\nbob,41\ncy,25\n").unwrap();
    let db = TestDb::new();
    db.execute("CREATE TABLE people (name text, age integer)");
    let run = db.importer(&[
        "run",
        "--format",
        "json",
        "-w",
        "2",
        "-b",
        "50",
        path_str(&csv),
    ]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(
        run.stdout.trim().lines().count(),
        1,
        "one JSON object, nothing else\n{run:?}"
    );
    let stats = run.json();
    let object = stats.as_object().expect("stats are a JSON object");
    let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
    keys.sort_unstable();
    let mut expected = STATS_FIELDS.to_vec();
    expected.sort_unstable();
    assert_eq!(keys, expected, "exactly the contract's 10 fields");
    assert_eq!(stats["method"], "batch", "batch is the default method");
    assert_eq!(stats["file"], "people.csv");
    assert_eq!(stats["table"], "people");
    assert_eq!(stats["total_records"], 3);
    assert_eq!(stats["success_count"], 3);
    assert_eq!(stats["error_count"], 0);
    assert_eq!(stats["workers"], 2);
    assert_eq!(stats["batch_size"], 50);
    assert!(stats["duration_seconds"].as_f64().is_some_and(|s| s >= 0.0));
    assert!(
        stats["records_per_second"]
            .as_f64()
            .is_some_and(|r| r >= 0.0)
    );
    assert!(
        !run.stderr.lines().any(|line| line.starts_with("error")),
        "{run:?}"
    );
    assert_eq!(db.count("people"), 3);
}

#[test]
fn exit_3_when_some_rows_are_rejected() {
    let dir = TempDir::new();
    let csv = dir.path("people.csv");
    std::fs::write(&csv, "name,age\nann,30\nbob,abc\ncy,25\n").unwrap();
    let db = TestDb::new();
    db.execute("CREATE TABLE people (name text, age integer)");
    let run = db.importer(&["run", "--format", "json", path_str(&csv)]);
    assert_eq!(run.code, 3, "{run:?}");
    let stats = run.json();
    assert_eq!(stats["total_records"], 3);
    assert_eq!(stats["success_count"], 2);
    assert_eq!(stats["error_count"], 1);
    assert!(
        !run.stderr.lines().any(|line| line.starts_with("error")),
        "a rejected row is not a fatal error\n{run:?}"
    );
    assert_eq!(
        db.rows("SELECT name FROM people ORDER BY name"),
        vec![some(&["ann"]), some(&["cy"])]
    );
}

#[test]
fn text_format_prints_only_the_stats_table() {
    let dir = TempDir::new();
    let csv = dir.path("people.csv");
    std::fs::write(&csv, "name,age\nann,30\nbob,abc\ncy,25\n").unwrap();
    let db = TestDb::new();
    db.execute("CREATE TABLE people (name text, age integer)");
    let run = db.importer(&["run", path_str(&csv)]);
    assert_eq!(run.code, 3, "{run:?}");
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(
        lines.len(),
        3,
        "header, rule and one row, nothing else\n{run:?}"
    );
    let cells = |line: &str| -> Vec<String> {
        line.trim()
            .trim_matches('|')
            .split('|')
            .map(|cell| cell.trim().to_string())
            .collect()
    };
    assert!(lines[0].starts_with("| Method |"), "{run:?}");
    assert_eq!(
        cells(lines[0]),
        [
            "Method",
            "Rows",
            "Inserted",
            "Rejected",
            "Time",
            "Records/sec"
        ],
        "{run:?}"
    );
    assert!(
        lines[1].starts_with("|-") && lines[1].chars().all(|ch| ch == '|' || ch == '-'),
        "{run:?}"
    );
    let row = cells(lines[2]);
    assert_eq!(row[..4], ["batch", "3", "2", "1"], "{run:?}");
    assert!(row[4].ends_with('s'), "time in seconds: {run:?}");
}

#[test]
fn stdout_holds_only_the_stats_even_with_debug_logging() {
    let dir = TempDir::new();
    let csv = dir.path("people.csv");
    std::fs::write(&csv, "name,age\nann,30\nbob,abc\n").unwrap();
    let db = TestDb::new();
    let output = Command::new(env!("CARGO_BIN_EXE_importer"))
        .args(["run", "--format", "json", path_str(&csv)])
        .env("DATABASE_URL", &db.url)
        .env("RUST_LOG", "debug")
        .output()
        .expect("the importer binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(!stderr.is_empty(), "debug logs go to stderr");
    let stats: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|error| panic!("stdout is one JSON object ({error}):\n{stdout}"));
    assert_eq!(stats["total_records"], 2);
}

#[test]
fn bad_method_value_is_a_usage_error_with_exit_2() {
    let run = run_importer(&["run", "--method", "turbo", "people.csv"], None);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stdout.is_empty(), "{run:?}");
    assert!(run.stderr.contains("turbo"), "{run:?}");
    assert!(run.stderr.contains("--method"), "{run:?}");
}

#[test]
fn missing_file_argument_is_a_usage_error_with_exit_2() {
    let run = run_importer(&["run", "--format", "json"], None);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stdout.is_empty(), "{run:?}");
    assert!(run.stderr.contains("<FILE>"), "{run:?}");
}

// ---- fatal errors: exit 1, one line on stderr ---------------------------------------------

#[test]
fn missing_file_exits_1_naming_the_file() {
    let dir = TempDir::new();
    let missing = dir.path("nowhere.xlsx");
    let db = TestDb::new();
    let run = db.importer(&["run", path_str(&missing)]);
    let line = fatal_error_line(&run);
    assert!(line.contains("nowhere.xlsx"), "{line}");
    assert!(line.contains("not found"), "{line}");
    assert!(run.stdout.is_empty(), "{run:?}");
}

#[test]
fn random_bytes_named_xlsx_exit_1_as_not_a_workbook() {
    let dir = TempDir::new();
    let file = dir.path("junk.xlsx");
    let bytes: Vec<u8> = (0..4096u32)
        .map(|index| (index.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&file, bytes).unwrap();
    let db = TestDb::new();
    let run = db.importer(&["run", path_str(&file)]);
    let line = fatal_error_line(&run);
    assert!(line.contains("junk.xlsx"), "{line}");
    assert!(run.stdout.is_empty(), "{run:?}");
    assert!(!table_exists(&db, "junk"), "nothing is created");
}

#[test]
fn a_txt_file_exits_1_as_not_a_spreadsheet() {
    let dir = TempDir::new();
    let file = dir.path("notes.txt");
    std::fs::write(&file, "name,age\nann,30\n").unwrap();
    let db = TestDb::new();
    let run = db.importer(&["run", path_str(&file)]);
    let line = fatal_error_line(&run);
    assert!(line.contains("notes.txt"), "{line}");
    assert!(line.contains("not a spreadsheet"), "{line}");
    assert!(run.stdout.is_empty(), "{run:?}");
    assert!(!table_exists(&db, "notes"), "nothing is created");
}

#[test]
fn a_truncated_xlsx_exits_1() {
    let dir = TempDir::new();
    let whole = dir.path("whole.xlsx");
    let rows: Vec<Vec<&str>> = (0..200).map(|_| vec!["some text", "more text"]).collect();
    let rows: Vec<&[&str]> = rows.iter().map(Vec::as_slice).collect();
    write_workbook(&whole, &[("Sheet1", text_rows(&rows))]);
    let bytes = std::fs::read(&whole).unwrap();
    let truncated = dir.path("truncated.xlsx");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let db = TestDb::new();
    let run = db.importer(&["run", path_str(&truncated)]);
    let line = fatal_error_line(&run);
    assert!(line.contains("truncated.xlsx"), "{line}");
    assert!(run.stdout.is_empty(), "{run:?}");
    assert!(!table_exists(&db, "truncated"), "nothing is created");
}

fn two_sheet_workbook(path: &Path) {
    write_workbook(
        path,
        &[
            ("First", text_rows(&[&["name"], &["from first"]])),
            (
                "Second",
                text_rows(&[&["name"], &["from second 1"], &["from second 2"]]),
            ),
        ],
    );
}

#[test]
fn unknown_sheet_lists_the_sheets_and_exits_1() {
    let dir = TempDir::new();
    let workbook = dir.path("book.xlsx");
    two_sheet_workbook(&workbook);
    let db = TestDb::new();
    let run = db.importer(&["run", "--sheet", "Third", path_str(&workbook)]);
    let line = fatal_error_line(&run);
    assert!(line.contains("Third"), "{line}");
    assert!(
        line.contains("First") && line.contains("Second"),
        "lists the sheets: {line}"
    );
    assert!(run.stdout.is_empty(), "{run:?}");
}

#[test]
fn sheet_index_out_of_range_exits_1_listing_the_sheets() {
    let dir = TempDir::new();
    let workbook = dir.path("book.xlsx");
    two_sheet_workbook(&workbook);
    let db = TestDb::new();
    let run = db.importer(&["run", "--sheet", "2", path_str(&workbook)]);
    let line = fatal_error_line(&run);
    assert!(line.contains('2'), "{line}");
    assert!(
        line.contains("First") && line.contains("Second"),
        "lists the sheets: {line}"
    );
    assert!(!table_exists(&db, "book"), "nothing is created");
}

#[test]
fn unknown_column_names_the_header_and_lists_the_columns_and_writes_nothing() {
    let dir = TempDir::new();
    let csv = dir.path("people.csv");
    std::fs::write(&csv, "Name,Zip Code\nann,1234\nbob,5678\n").unwrap();
    let db = TestDb::new();
    db.execute("CREATE TABLE people (name text, city text, phone_number text)");
    for method in ["sequential", "copy"] {
        let run = db.importer(&["run", "-m", method, path_str(&csv)]);
        let line = fatal_error_line(&run);
        assert!(
            line.contains("Zip Code"),
            "{method}: names the header: {line}"
        );
        for column in ["name", "city", "phone_number"] {
            assert!(
                line.contains(column),
                "{method}: lists column {column}: {line}"
            );
        }
        assert!(run.stdout.is_empty(), "{method}: {run:?}");
        assert_eq!(db.count("people"), 0, "{method}: nothing is written");
    }
}

#[test]
fn an_empty_header_cell_inside_the_header_exits_1_and_writes_nothing() {
    let dir = TempDir::new();
    let workbook = dir.path("people.xlsx");
    write_workbook(
        &workbook,
        &[(
            "Sheet1",
            text_rows(&[&["name", "", "city"], &["ann", "x", "Oslo"]]),
        )],
    );
    let db = TestDb::new();
    db.execute("CREATE TABLE people (name text, city text)");
    let run = db.importer(&["run", path_str(&workbook)]);
    let line = fatal_error_line(&run);
    assert!(line.contains("empty"), "{line}");
    assert!(line.contains('B'), "names the column letter: {line}");
    assert!(run.stdout.is_empty(), "{run:?}");
    assert_eq!(db.count("people"), 0);
}

#[test]
fn two_header_cells_folding_to_the_same_name_exit_1_and_create_nothing() {
    let dir = TempDir::new();
    let csv = dir.path("people.csv");
    std::fs::write(&csv, "E-Mail,city,e mail \na@x,Oslo,b@x\n").unwrap();
    let db = TestDb::new();
    let run = db.importer(&["run", path_str(&csv)]);
    let line = fatal_error_line(&run);
    assert!(
        line.contains("E-Mail") && line.contains("e mail"),
        "names both cells: {line}"
    );
    assert!(line.contains("e_mail"), "names the folded name: {line}");
    assert!(run.stdout.is_empty(), "{run:?}");
    assert!(!table_exists(&db, "people"), "nothing is created");
}

#[test]
fn no_create_on_a_missing_table_exits_1_and_creates_nothing() {
    let dir = TempDir::new();
    let csv = dir.path("people.csv");
    std::fs::write(&csv, "name\nann\n").unwrap();
    let db = TestDb::new();
    let run = db.importer(&["run", "--no-create", "-t", "missing_people", path_str(&csv)]);
    let line = fatal_error_line(&run);
    assert!(line.contains("missing_people"), "{line}");
    assert!(line.contains("--no-create"), "says how to fix it: {line}");
    assert!(run.stdout.is_empty(), "{run:?}");
    assert!(!table_exists(&db, "missing_people"));
}

#[test]
fn unreachable_database_names_host_and_port_and_never_shows_the_password() {
    let dir = TempDir::new();
    let csv = dir.path("people.csv");
    std::fs::write(&csv, "name\nann\n").unwrap();
    let url = "postgres://x:secretpw@127.0.0.1:1/db";
    // --connect-timeout 0: one attempt, not the default 30 s of retries (see nightly.rs)
    let by_flag = run_importer(
        &[
            "run",
            "--connect-timeout",
            "0",
            "--database-url",
            url,
            path_str(&csv),
        ],
        None,
    );
    let by_env = run_importer(
        &["run", "--connect-timeout", "0", path_str(&csv)],
        Some(url),
    );
    for (how, run) in [("--database-url", by_flag), ("DATABASE_URL", by_env)] {
        let line = fatal_error_line(&run);
        assert!(
            line.contains("127.0.0.1:1"),
            "{how}: names host:port: {line}"
        );
        assert!(
            line.contains("is a server running on 127.0.0.1:1 and accepting TCP connections?"),
            "{how}: says what to check: {line}"
        );
        assert!(
            !run.stderr.contains("secretpw") && !run.stdout.contains("secretpw"),
            "{how}: the password never shows\n{run:?}"
        );
    }
}

// The local server uses trust authentication on 127.0.0.1, so a wrong password cannot be
// provoked here; that case is deliberately not tested rather than faked.

// ---- picking the sheet, the header and the table ------------------------------------------

#[test]
fn sheet_by_name_picks_that_sheet() {
    let dir = TempDir::new();
    let workbook = dir.path("book.xlsx");
    two_sheet_workbook(&workbook);
    let db = TestDb::new();
    let run = db.importer(&[
        "run",
        "--format",
        "json",
        "--sheet",
        "Second",
        path_str(&workbook),
    ]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.json()["total_records"], 2);
    assert_eq!(
        db.rows("SELECT name FROM book ORDER BY name"),
        vec![some(&["from second 1"]), some(&["from second 2"])]
    );
}

#[test]
fn sheet_by_zero_based_index_picks_that_sheet() {
    let dir = TempDir::new();
    let workbook = dir.path("book.xlsx");
    two_sheet_workbook(&workbook);
    let db = TestDb::new();
    let run = db.importer(&["run", "--sheet", "1", "-t", "second", path_str(&workbook)]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(
        db.rows("SELECT name FROM second ORDER BY name"),
        vec![some(&["from second 1"]), some(&["from second 2"])]
    );
    let run = db.importer(&["run", "--sheet", "0", "-t", "first", path_str(&workbook)]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(
        db.rows("SELECT name FROM first"),
        vec![some(&["from first"])]
    );
}

#[test]
fn header_row_3_ignores_rows_1_and_2() {
    let dir = TempDir::new();
    let workbook = dir.path("report.xlsx");
    write_workbook(
        &workbook,
        &[(
            "Sheet1",
            text_rows(&[
                &["Quarterly report", "", "", "draft"],
                &["generated by", "someone", "", "", "stray"],
                &["Name", "City"],
                &["ann", "Oslo"],
                &["bob", "Rome"],
            ]),
        )],
    );
    let db = TestDb::new();
    db.execute("CREATE TABLE report (name text, city text)");
    let run = db.importer(&[
        "run",
        "--format",
        "json",
        "--header-row",
        "3",
        path_str(&workbook),
    ]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.json()["total_records"], 2);
    assert_eq!(
        db.rows("SELECT name, city FROM report ORDER BY name"),
        vec![some(&["ann", "Oslo"]), some(&["bob", "Rome"])]
    );
}

#[test]
fn default_table_name_is_the_folded_file_stem() {
    let dir = TempDir::new();
    let workbook = dir.path("Q3 Sales.xlsx");
    write_workbook(
        &workbook,
        &[("Sheet1", text_rows(&[&["region"], &["north"], &["south"]]))],
    );
    let db = TestDb::new();
    let run = db.importer(&["run", "--format", "json", path_str(&workbook)]);
    assert_eq!(run.code, 0, "{run:?}");
    let stats = run.json();
    assert_eq!(stats["table"], "q3_sales");
    assert_eq!(stats["file"], "Q3 Sales.xlsx");
    assert_eq!(db.count("q3_sales"), 2);
}

#[test]
fn schema_qualified_table_goes_into_that_schema() {
    let dir = TempDir::new();
    let csv = dir.path("orders.csv");
    std::fs::write(&csv, "item,qty\npen,2\ncup,5\n").unwrap();
    let db = TestDb::new();
    db.execute("CREATE SCHEMA sales; CREATE TABLE sales.orders (item text, qty integer)");
    let run = db.importer(&[
        "run",
        "--format",
        "json",
        "-t",
        "sales.orders",
        path_str(&csv),
    ]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.json()["table"], "sales.orders");
    assert_eq!(
        db.rows("SELECT item, qty FROM sales.orders ORDER BY item"),
        vec![some(&["cup", "5"]), some(&["pen", "2"])]
    );
    assert!(!table_exists(&db, "public.orders"));
}

#[test]
fn identifiers_with_quotes_spaces_and_uppercase_are_quoted() {
    let dir = TempDir::new();
    let csv = dir.path("odd.csv");
    std::fs::write(
        &csv,
        "Full Name,QTY,\"Odd \"\"Col\"\"\"\nann,3,x\nbob,4,y\n",
    )
    .unwrap();
    let db = TestDb::new();
    db.execute(
        r#"CREATE TABLE "My ""Odd"" Table" ("Full Name" text, "QTY" integer, "Odd ""Col""" text);
           CREATE TABLE victim (id integer)"#,
    );
    for method in ["sequential", "concurrent", "batch", "copy"] {
        db.execute(r#"TRUNCATE "My ""Odd"" Table""#);
        let run = db.importer(&[
            "run",
            "-m",
            method,
            "-t",
            r#"My "Odd" Table"#,
            path_str(&csv),
        ]);
        assert_eq!(run.code, 0, "{method}: {run:?}");
        assert_eq!(
            db.rows(
                r#"SELECT "Full Name", "QTY", "Odd ""Col""" FROM "My ""Odd"" Table" ORDER BY 1"#
            ),
            vec![some(&["ann", "3", "x"]), some(&["bob", "4", "y"])],
            "{method}"
        );
    }
    // a missing table with a hostile name is created under exactly that name
    let hostile = r#"Weird"; DROP TABLE victim; --"#;
    let run = db.importer(&["run", "-t", hostile, path_str(&csv)]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(table_exists(&db, r#""Weird""; DROP TABLE victim; --""#));
    assert!(table_exists(&db, "victim"), "the name is never run as SQL");
    assert_eq!(
        db.rows(
            r#"SELECT full_name, qty, odd_col FROM "Weird""; DROP TABLE victim; --" ORDER BY 1"#
        ),
        vec![some(&["ann", "3", "x"]), some(&["bob", "4", "y"])]
    );
}

#[test]
fn blank_rows_are_skipped_and_not_counted() {
    let dir = TempDir::new();
    let workbook = dir.path("gaps.xlsx");
    write_workbook(
        &workbook,
        &[(
            "Sheet1",
            text_rows(&[
                &["name", "city"],
                &["ann", "Oslo"],
                &[],
                &["", ""],
                &["bob", ""],
                &[],
                &["", "Rome"],
            ]),
        )],
    );
    let csv = dir.path("gaps.csv");
    std::fs::write(&csv, "name,city\nann,Oslo\n,\n\nbob,\n,,\n,Rome\n").unwrap();
    let db = TestDb::new();
    db.execute("CREATE TABLE gaps (name text, city text)");
    for file in [&workbook, &csv] {
        db.execute("TRUNCATE gaps");
        let run = db.importer(&["run", "--format", "json", path_str(file)]);
        assert_eq!(run.code, 0, "{}: {run:?}", file.display());
        let stats = run.json();
        assert_eq!(stats["total_records"], 3, "{}", file.display());
        assert_eq!(stats["success_count"], 3, "{}", file.display());
        assert_eq!(db.count("gaps"), 3, "{}", file.display());
    }
}

#[test]
fn header_matching_is_case_insensitive_after_folding() {
    let dir = TempDir::new();
    let csv = dir.path("contacts.csv");
    std::fs::write(
        &csv,
        "Phone Number ,E-Mail,  NAME\n555-1234,ann@example.com,Ann\n",
    )
    .unwrap();
    let db = TestDb::new();
    db.execute("CREATE TABLE contacts (name text, e_mail text, phone_number text)");
    let run = db.importer(&["run", path_str(&csv)]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(
        db.rows("SELECT name, e_mail, phone_number FROM contacts"),
        vec![some(&["Ann", "ann@example.com", "555-1234"])]
    );
}

#[test]
fn table_columns_absent_from_the_sheet_get_their_defaults() {
    let dir = TempDir::new();
    let csv = dir.path("tickets.csv");
    std::fs::write(&csv, "title\nfirst\nsecond\n").unwrap();
    let db = TestDb::new();
    db.execute(
        "CREATE TABLE tickets (id serial PRIMARY KEY, title text NOT NULL, \
         status text NOT NULL DEFAULT 'open', due date DEFAULT '2030-01-01', note text)",
    );
    for method in ["sequential", "concurrent", "batch", "copy"] {
        db.execute("TRUNCATE tickets RESTART IDENTITY");
        let run = db.importer(&["run", "-m", method, path_str(&csv)]);
        assert_eq!(run.code, 0, "{method}: {run:?}");
        let rows = db.rows("SELECT id, title, status, due::text, note FROM tickets ORDER BY title");
        assert_eq!(rows.len(), 2, "{method}");
        for (row, title) in rows.iter().zip(["first", "second"]) {
            assert!(row[0].is_some(), "{method}: id from its sequence");
            assert_eq!(row[1..4], some(&[title, "open", "2030-01-01"]), "{method}");
            assert_eq!(row[4], None, "{method}: no default, NULL");
        }
    }
}

// ---- rough edges a new user meets ------------------------------------------------------

#[test]
fn resume_flags_that_cannot_work_together_are_usage_errors() {
    let dir = TempDir::new();
    let csv = dir.path("t.csv");
    std::fs::write(&csv, "id\n1\n").unwrap();
    for (flags, expected) in [
        (
            &["--resume", "--atomic"][..],
            "--resume cannot be combined with --atomic",
        ),
        (
            &["--resume", "--mode", "replace"][..],
            "--resume cannot be combined with --atomic or --mode replace",
        ),
        (&["--resume", "--dry-run"][..], "'--dry-run'"),
        (&["--resume", "--no-ledger"][..], "'--no-ledger'"),
        (&["--resume", "--no-resume"][..], "'--resume'"),
        (
            &["--no-resume", "--skip-unchanged"][..],
            "'--skip-unchanged'",
        ),
    ] {
        let mut args = vec!["run"];
        args.extend_from_slice(flags);
        args.push(path_str(&csv));
        // no server: a usage error comes before any connection
        let run = run_importer(&args, None);
        assert_eq!(run.code, 2, "{flags:?}: {run:?}");
        assert!(run.stderr.contains(expected), "{flags:?}: {run:?}");
        assert!(!run.stderr.contains("connect"), "{flags:?}: {run:?}");
    }
}

#[test]
fn a_zero_byte_file_is_refused_saying_it_is_empty() {
    let dir = TempDir::new();
    for name in ["empty.xlsx", "empty.xls", "empty.ods", "empty.csv"] {
        let path = dir.path(name);
        std::fs::write(&path, b"").unwrap();
        let run = run_importer(&["run", path_str(&path)], None);
        let line = fatal_error_line(&run);
        assert!(
            line.contains(&format!("{} is empty (0 bytes)", path.display())),
            "{name}: {line}"
        );
    }
    let mut command = crate::util::importer_command(&["run", "-t", "t", "-"], None, &[]);
    let output = command
        .stdin(std::process::Stdio::null())
        .output()
        .expect("the importer binary runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("error: standard input is empty (0 bytes)"),
        "{stderr}"
    );
}

#[test]
fn a_missing_schema_says_how_to_create_it_before_anything_is_created() {
    let dir = TempDir::new();
    let csv = dir.path("t.csv");
    std::fs::write(&csv, "id\n1\n").unwrap();
    let db = TestDb::new();
    for extra in [&[][..], &["--no-create"][..]] {
        let mut args = vec!["run", "-t", "nosuch.t"];
        args.extend_from_slice(extra);
        args.push(path_str(&csv));
        let run = db.importer(&args);
        let line = fatal_error_line(&run);
        assert!(
            line.contains(r#"schema "nosuch" of table nosuch.t does not exist; create it first with `CREATE SCHEMA "nosuch"`"#),
            "{extra:?}: {line}"
        );
    }
    assert!(!table_exists(&db, "importer.runs"), "nothing was recorded");
}

#[test]
fn rejects_or_summary_into_a_missing_directory_names_the_directory() {
    let dir = TempDir::new();
    let csv = dir.path("t.csv");
    std::fs::write(&csv, "id\n1\n").unwrap();
    let missing = dir.path("no/such/dir");
    let rejects = missing.join("rejects.csv");
    let summary = missing.join("summary.json");
    for (flag, path) in [("--rejects", &rejects), ("--summary", &summary)] {
        // checked before any connection: no server is needed
        let run = run_importer(&["run", flag, path_str(path), path_str(&csv)], None);
        let line = fatal_error_line(&run);
        assert!(
            line.contains(&format!(
                "{flag} {} cannot be written: the directory {} does not exist",
                path.display(),
                missing.display()
            )),
            "{line}"
        );
    }
}

#[test]
fn upsert_text_table_says_written_where_append_says_inserted() {
    let dir = TempDir::new();
    let csv = dir.path("people.csv");
    std::fs::write(&csv, "id,name\n1,ann\n2,bob\n").unwrap();
    let db = TestDb::new();
    db.execute("CREATE TABLE people (id bigint PRIMARY KEY, name text); INSERT INTO people VALUES (1, 'old')");
    let run = db.importer(&["run", "--mode", "upsert", "--key", "id", path_str(&csv)]);
    assert_eq!(run.code, 0, "{run:?}");
    let header = run.stdout.lines().next().unwrap_or_default();
    assert!(
        header.contains("| Written |") && !header.contains("Inserted"),
        "{run:?}"
    );
    let json = db.importer(&[
        "run",
        "--mode",
        "upsert",
        "--key",
        "id",
        "--format",
        "json",
        path_str(&csv),
    ]);
    let stats = json.json();
    let mut fields: Vec<&str> = stats
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let mut contract = STATS_FIELDS.to_vec();
    fields.sort_unstable();
    contract.sort_unstable();
    assert_eq!(fields, contract, "the JSON is the contract's, nothing more");
}

#[test]
fn run_help_says_what_dry_run_does() {
    let run = run_importer(&["run", "--help"], None);
    assert_eq!(run.code, 0, "{run:?}");
    let help: String = run.stdout.split_whitespace().collect::<Vec<_>>().join(" ");
    let dry_run = help
        .split("--dry-run ")
        .nth(1)
        .unwrap_or_else(|| panic!("--dry-run is described\n{help}"));
    for promise in [
        "print the stats",
        "write nothing to the database: no rows, no run ledger, no lock",
        "A missing table is not created: the CREATE TABLE a real run would execute comes with the stats",
    ] {
        assert!(dry_run.contains(promise), "{promise:?} in {dry_run}");
    }
}
