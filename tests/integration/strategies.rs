//! Every method over the same input leaves the same rows and the same stats.

use crate::util::{TempDir, TestDb, project_fixture, run_importer};

/// Table rows as text, in order.
type Rows = Vec<Vec<Option<String>>>;

const METHODS: [&str; 4] = ["sequential", "concurrent", "batch", "copy"];

/// The stats fields that must agree between methods.
fn counts(stats: &serde_json::Value) -> (u64, u64, u64) {
    (
        stats["total_records"].as_u64().expect("total_records"),
        stats["success_count"].as_u64().expect("success_count"),
        stats["error_count"].as_u64().expect("error_count"),
    )
}

const BUSINESS_ROWS: &str = "SELECT name, category, phone, email, address, city, country, website, description \
     FROM businesses ORDER BY email, name";

#[test]
fn every_method_leaves_the_same_rows_and_stats() {
    let dir = TempDir::new();
    let workbook = dir.path("businesses.xlsx");
    let generated = run_importer(
        &[
            "generate",
            "--rows",
            "1500",
            "--seed",
            "7",
            "--bad-rows",
            "0.01",
            workbook.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(generated.code, 0, "{generated:?}");
    let schema = std::fs::read_to_string(project_fixture("businesses.sql")).unwrap();

    let mut reference: Option<(Rows, (u64, u64, u64))> = None;
    for method in METHODS {
        let db = TestDb::new();
        db.execute(&schema);
        let run = db.importer(&[
            "run",
            "--method",
            method,
            "--batch-size",
            "100",
            "--workers",
            "3",
            "--format",
            "json",
            workbook.to_str().unwrap(),
        ]);
        assert_eq!(
            run.code, 3,
            "{method}: some rows are bad, so exit 3\n{run:?}"
        );
        let stats = run.json();
        assert_eq!(stats["method"], method);
        assert_eq!(stats["table"], "businesses");
        assert_eq!(stats["file"], "businesses.xlsx");
        assert_eq!(counts(&stats), (1500, 1485, 15), "{method}");
        assert_eq!(
            db.count("businesses"),
            1485,
            "{method}: success_count rows are in the table"
        );
        let rows = db.rows(BUSINESS_ROWS);
        match &reference {
            None => reference = Some((rows, counts(&stats))),
            Some((expected_rows, expected_counts)) => {
                assert_eq!(
                    &counts(&stats),
                    expected_counts,
                    "{method} stats differ from sequential"
                );
                assert!(
                    &rows == expected_rows,
                    "{method} left other rows than sequential"
                );
            }
        }
    }
}

/// A table with a unique email: one duplicate in the middle of a 1000-row batch must cost
/// exactly that one row, for every method.
#[test]
fn a_unique_violation_inside_a_batch_costs_exactly_one_row() {
    let dir = TempDir::new();
    let csv = dir.path("people.csv");
    let mut text = String::from("email,age\n");
    for index in 0..2000 {
        // row 517 of the sheet (data row 516) repeats the email of data row 10
        let email = if index == 515 {
            "person9@example.com".to_string()
        } else {
            format!("person{index}@example.com")
        };
        text.push_str(&format!("{email},{}\n", index % 90));
    }
    std::fs::write(&csv, text).unwrap();
    for method in METHODS {
        let db = TestDb::new();
        db.execute("CREATE TABLE people (id serial PRIMARY KEY, email text UNIQUE NOT NULL, age integer CHECK (age < 89))");
        let rejects = dir.path(&format!("{method}.rejects.csv"));
        let run = db.importer(&[
            "run",
            "-m",
            method,
            "-b",
            "1000",
            "--format",
            "json",
            "--rejects",
            rejects.to_str().unwrap(),
            csv.to_str().unwrap(),
        ]);
        assert_eq!(run.code, 3, "{method}\n{run:?}");
        // 1 duplicate email + 22 rows with age 89 (index % 90 == 89: 22 of 2000 rows)
        let stats = run.json();
        assert_eq!(counts(&stats), (2000, 1977, 23), "{method}");
        assert_eq!(db.count("people"), 1977, "{method}");
        let rejected = std::fs::read_to_string(&rejects).unwrap();
        let lines: Vec<&str> = rejected.lines().collect();
        assert_eq!(lines[0], "row_number,column,reason,email,age");
        assert_eq!(
            lines.len(),
            24,
            "{method}: header + 23 rejected rows\n{rejected}"
        );
        let duplicate: Vec<&&str> = lines
            .iter()
            .filter(|line| line.starts_with("517,"))
            .collect();
        assert_eq!(
            duplicate.len(),
            1,
            "{method}: row 517 is rejected\n{rejected}"
        );
        assert!(
            duplicate[0].contains("duplicate key"),
            "{method}: {}",
            duplicate[0]
        );
        assert!(
            duplicate[0].ends_with(",person9@example.com,65"),
            "{method}: {}",
            duplicate[0]
        );
    }
}

#[test]
fn not_null_columns_with_a_default_take_the_default_for_every_method() {
    let dir = TempDir::new();
    let csv = dir.path("events.csv");
    std::fs::write(&csv, "name,status\na,open\nb,\nc,closed\n").unwrap();
    for method in METHODS {
        let db = TestDb::new();
        db.execute("CREATE TABLE events (name text NOT NULL, status text NOT NULL DEFAULT 'new', note text DEFAULT 'x')");
        let run = db.importer(&[
            "run",
            "-m",
            method,
            "--format",
            "json",
            "-t",
            "events",
            csv.to_str().unwrap(),
        ]);
        assert_eq!(run.code, 0, "{method}\n{run:?}");
        assert_eq!(
            db.rows("SELECT name, status, note FROM events ORDER BY name"),
            vec![
                vec![Some("a".into()), Some("open".into()), Some("x".into())],
                vec![Some("b".into()), Some("new".into()), Some("x".into())],
                vec![Some("c".into()), Some("closed".into()), Some("x".into())],
            ],
            "{method}"
        );
    }
}

/// Strings that COPY's text format (and careless quoting) could misread arrive unchanged,
/// by every method.
#[test]
fn awkward_strings_arrive_unchanged_by_every_method() {
    let dir = TempDir::new();
    let workbook = dir.path("awkward.xlsx");
    let long = "x\ty\\z\n".repeat(5_000); // 30,000 characters
    let values: Vec<String> = vec![
        "tab\there".into(),
        "two\nlines\r\nthree".into(),
        "back\\slash".into(),
        "\\N".into(),
        "\\.".into(),
        "NULL".into(),
        "'; DROP TABLE t; --".into(),
        "\"quoted\"".into(),
        "ünïcødé ✓ 漢字".into(),
        "  padded  ".into(),
        long,
    ];
    let mut book = rust_xlsxwriter::Workbook::new();
    let sheet = book.add_worksheet();
    sheet.write_string(0, 0, "Value").unwrap();
    sheet.write_string(0, 1, "Position").unwrap();
    for (index, value) in values.iter().enumerate() {
        let row = index as u32 + 1;
        sheet.write_string(row, 0, value).unwrap();
        sheet.write_number(row, 1, index as f64).unwrap();
    }
    book.save(&workbook).unwrap();
    for method in METHODS {
        let db = TestDb::new();
        db.execute("CREATE TABLE awkward (value text, position integer)");
        let run = db.importer(&["run", "-m", method, "-b", "4", workbook.to_str().unwrap()]);
        assert_eq!(run.code, 0, "{method}\n{run:?}");
        let stored: Vec<Option<String>> = db
            .rows("SELECT value FROM awkward ORDER BY position")
            .into_iter()
            .map(|mut row| row.remove(0))
            .collect();
        let expected: Vec<Option<String>> = values.iter().cloned().map(Some).collect();
        assert!(stored == expected, "{method} changed a value");
    }
}
