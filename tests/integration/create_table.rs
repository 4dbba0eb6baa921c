//! Creating a missing table: one column per header cell, under its folded name, with the
//! type inferred from every data row (contract: "Creating a missing table").

use std::path::Path;

use crate::util::{Cell, TempDir, TestDb, write_workbook};

fn path_str(path: &Path) -> &str {
    path.to_str().expect("temp paths are UTF-8")
}

/// Imports a workbook whose first column `n` numbers the rows (1, 2, ...) and whose other
/// columns hold `columns`' cells, into the missing table `inferred`. Returns the database.
fn import_into_missing_table(columns: &[(&str, Vec<Cell>)]) -> TestDb {
    let row_count = columns
        .iter()
        .map(|(_, cells)| cells.len())
        .max()
        .unwrap_or(0);
    let mut rows = vec![
        std::iter::once(Cell::from("n"))
            .chain(columns.iter().map(|(name, _)| Cell::from(*name)))
            .collect::<Vec<Cell>>(),
    ];
    for row_index in 0..row_count {
        let mut row = vec![Cell::Number(row_index as f64 + 1.0)];
        row.extend(
            columns
                .iter()
                .map(|(_, cells)| cells.get(row_index).cloned().unwrap_or(Cell::Empty)),
        );
        rows.push(row);
    }
    let dir = TempDir::new();
    let workbook = dir.path("inferred.xlsx");
    write_workbook(&workbook, &[("Sheet1", rows)]);
    let db = TestDb::new();
    let run = db.importer(&["run", "--format", "json", path_str(&workbook)]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.json()["total_records"], row_count);
    assert_eq!(db.count("inferred"), row_count as i64);
    db
}

/// The created column's `information_schema.columns.data_type`.
fn data_type(db: &TestDb, column: &str) -> String {
    db.scalar(&format!(
        "SELECT data_type FROM information_schema.columns \
         WHERE table_schema = 'public' AND table_name = 'inferred' AND column_name = '{column}'"
    ))
    .unwrap_or_else(|| panic!("column {column} exists"))
}

/// The column's values as text, in row order.
fn values(db: &TestDb, column: &str) -> Vec<Option<String>> {
    db.rows(&format!("SELECT {column}::text FROM inferred ORDER BY n"))
        .into_iter()
        .map(|mut row| row.remove(0))
        .collect()
}

fn some(values: &[&str]) -> Vec<Option<String>> {
    values.iter().map(|value| Some(value.to_string())).collect()
}

fn date(text: &str) -> Cell {
    Cell::Date(text.to_string())
}

#[test]
fn missing_table_gets_one_column_per_header_cell_under_its_folded_name() {
    let db = import_into_missing_table(&[
        ("Full Name", vec!["ann".into(), "bob".into()]),
        ("E-Mail", vec!["a@x".into(), "b@x".into()]),
        (" Zip  Code ", vec!["0150".into(), "0151".into()]),
        ("ID#", vec![1.0.into(), 2.0.into()]),
    ]);
    let columns = db.rows(
        "SELECT column_name FROM information_schema.columns \
         WHERE table_schema = 'public' AND table_name = 'inferred' ORDER BY ordinal_position",
    );
    assert_eq!(
        columns,
        vec![
            some(&["n"]),
            some(&["full_name"]),
            some(&["e_mail"]),
            some(&["zip_code"]),
            some(&["id"]),
        ]
    );
    assert_eq!(values(&db, "full_name"), some(&["ann", "bob"]));
    assert_eq!(values(&db, "zip_code"), some(&["0150", "0151"]));
}

#[test]
fn integers_and_integral_floats_infer_bigint() {
    let db = import_into_missing_table(&[(
        "amount",
        vec![
            1.0.into(),
            2.0.into(),
            Cell::Empty,
            (-3.0).into(),
            1e15.into(),
        ],
    )]);
    assert_eq!(data_type(&db, "n"), "bigint");
    assert_eq!(data_type(&db, "amount"), "bigint");
    assert_eq!(
        values(&db, "amount"),
        vec![
            Some("1".into()),
            Some("2".into()),
            None,
            Some("-3".into()),
            Some("1000000000000000".into()),
        ]
    );
}

#[test]
fn numbers_with_a_fraction_infer_double_precision() {
    let db = import_into_missing_table(&[("price", vec![1.0.into(), 2.5.into(), (-0.125).into()])]);
    assert_eq!(data_type(&db, "price"), "double precision");
    assert_eq!(values(&db, "price"), some(&["1", "2.5", "-0.125"]));
}

#[test]
fn integral_floats_beyond_bigint_infer_double_precision() {
    let db = import_into_missing_table(&[("big", vec![1.0.into(), 1e19.into()])]);
    assert_eq!(data_type(&db, "big"), "double precision");
    assert_eq!(values(&db, "big"), some(&["1", "1e+19"]));
}

#[test]
fn booleans_infer_boolean() {
    let db = import_into_missing_table(&[(
        "active",
        vec![true.into(), false.into(), Cell::Empty, true.into()],
    )]);
    assert_eq!(data_type(&db, "active"), "boolean");
    assert_eq!(
        values(&db, "active"),
        vec![
            Some("true".into()),
            Some("false".into()),
            None,
            Some("true".into())
        ]
    );
}

#[test]
fn date_cells_without_a_time_part_infer_date() {
    let db = import_into_missing_table(&[(
        "day",
        vec![date("2024-01-02"), Cell::Empty, date("1999-12-31")],
    )]);
    assert_eq!(data_type(&db, "day"), "date");
    assert_eq!(
        values(&db, "day"),
        vec![Some("2024-01-02".into()), None, Some("1999-12-31".into())]
    );
}

#[test]
fn date_cells_with_a_time_part_infer_timestamp() {
    let db =
        import_into_missing_table(&[("at", vec![date("2024-01-02"), date("2024-01-02 10:30:00")])]);
    assert_eq!(data_type(&db, "at"), "timestamp without time zone");
    assert_eq!(
        values(&db, "at"),
        some(&["2024-01-02 00:00:00", "2024-01-02 10:30:00"])
    );
}

#[test]
fn mixed_cells_infer_text() {
    let db = import_into_missing_table(&[
        ("number_and_string", vec![1.0.into(), "x".into()]),
        ("boolean_and_number", vec![true.into(), 1.0.into()]),
        ("date_and_number", vec![date("2024-01-02"), 5.0.into()]),
        ("numeric_strings", vec!["1".into(), "2".into()]),
        ("strings", vec!["a".into(), "b".into()]),
    ]);
    for (column, expected) in [
        ("number_and_string", ["1", "x"]),
        ("boolean_and_number", ["true", "1"]),
        ("date_and_number", ["2024-01-02", "5"]),
        ("numeric_strings", ["1", "2"]),
        ("strings", ["a", "b"]),
    ] {
        assert_eq!(data_type(&db, column), "text", "{column}");
        assert_eq!(values(&db, column), some(&expected), "{column}");
    }
}

#[test]
fn an_all_empty_column_infers_text() {
    let db = import_into_missing_table(&[
        ("nothing", vec![Cell::Empty, Cell::Empty]),
        ("something", vec!["a".into(), "b".into()]),
    ]);
    assert_eq!(data_type(&db, "nothing"), "text");
    assert_eq!(values(&db, "nothing"), vec![None, None]);
}

#[test]
fn inference_looks_at_every_data_row() {
    let mut amounts: Vec<Cell> = (0..5000).map(|index| Cell::Number(index as f64)).collect();
    amounts.push(2.5.into());
    let db = import_into_missing_table(&[("amount", amounts)]);
    assert_eq!(
        data_type(&db, "amount"),
        "double precision",
        "one fraction in the last row makes the column double precision"
    );
    assert_eq!(
        db.scalar("SELECT amount::text FROM inferred WHERE n = 5001"),
        Some("2.5".to_string())
    );
}

#[test]
fn csv_cells_are_strings_so_every_created_column_is_text() {
    let dir = TempDir::new();
    let csv = dir.path("strings.csv");
    std::fs::write(&csv, "n,flag,day\n1,true,2024-01-02\n2,false,2024-01-03\n").unwrap();
    let db = TestDb::new();
    let run = db.importer(&["run", path_str(&csv)]);
    assert_eq!(run.code, 0, "{run:?}");
    let types = db.rows(
        "SELECT column_name, data_type FROM information_schema.columns \
         WHERE table_schema = 'public' AND table_name = 'strings' ORDER BY ordinal_position",
    );
    assert_eq!(
        types,
        vec![
            some(&["n", "text"]),
            some(&["flag", "text"]),
            some(&["day", "text"]),
        ]
    );
    assert_eq!(db.count("strings"), 2);
}

#[test]
fn header_row_and_sheet_flags_apply_to_the_created_table() {
    let dir = TempDir::new();
    let workbook = dir.path("book.xlsx");
    write_workbook(
        &workbook,
        &[
            ("Ignored", vec![vec!["other".into()], vec!["zzz".into()]]),
            (
                "Data",
                vec![
                    vec!["title row".into(), Cell::Empty, "note".into()],
                    vec!["Item".into(), "Qty".into()],
                    vec!["pen".into(), 2.0.into()],
                    vec!["cup".into(), 5.0.into()],
                ],
            ),
        ],
    );
    let db = TestDb::new();
    let run = db.importer(&[
        "run",
        "--sheet",
        "Data",
        "--header-row",
        "2",
        "-t",
        "stock",
        path_str(&workbook),
    ]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(
        db.rows(
            "SELECT column_name, data_type FROM information_schema.columns \
             WHERE table_schema = 'public' AND table_name = 'stock' ORDER BY ordinal_position"
        ),
        vec![some(&["item", "text"]), some(&["qty", "bigint"])]
    );
    assert_eq!(
        db.rows("SELECT item, qty FROM stock ORDER BY item"),
        vec![some(&["cup", "5"]), some(&["pen", "2"])]
    );
}
