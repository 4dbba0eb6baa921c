//! CSV input as psql's `\copy` and csvkit users expect it: invalid UTF-8 as a rejected row,
//! row numbers after blank lines, delimiter sniffing, --delimiter/--quote/--encoding/
//! --null-string, the header line, standard input, and files whose content is not what
//! their name says.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::util::{Run, TempDir, TestDb, fatal_error_line};

fn path_str(path: &Path) -> &str {
    path.to_str().expect("temp paths are UTF-8")
}

/// The rejects file's lines, parsed.
fn rejects_lines(path: &Path) -> Vec<Vec<String>> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .from_path(path)
        .expect("the rejects file exists");
    reader
        .records()
        .map(|record| {
            record
                .expect("the rejects file is valid CSV")
                .iter()
                .map(str::to_string)
                .collect()
        })
        .collect()
}

/// Runs the binary with `input` on its standard input; also returns its pid.
fn run_with_stdin(db: &TestDb, args: &[&str], input: &[u8]) -> (Run, u32) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_importer"))
        .args(args)
        .env("RUST_LOG", "warn")
        .env("DATABASE_URL", &db.url)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the importer binary starts");
    let pid = child.id();
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        // a run that fails before reading its input closes the pipe: that is not our error
        stdin.write_all(&input).ok();
    });
    let output = child.wait_with_output().expect("the importer binary runs");
    writer.join().expect("the stdin writer does not panic");
    let run = Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    };
    (run, pid)
}

fn invalid_utf8_record_is_rejected_and_the_rest_load(method: &str) {
    let dir = TempDir::new();
    let file = dir.path("people.csv");
    std::fs::write(&file, b"name,age\nann,30\nb\xffb,41\ncy,25\n\xfe,\n").unwrap();
    let rejects = dir.path("rejects.csv");
    let db = TestDb::new();
    let run = db.importer(&[
        "run",
        "-m",
        method,
        "--format",
        "json",
        "--rejects",
        path_str(&rejects),
        path_str(&file),
    ]);
    assert_eq!(run.code, 3, "{run:?}");
    let stats = run.json();
    assert_eq!(stats["total_records"], 4, "{run:?}");
    assert_eq!(stats["success_count"], 2, "{run:?}");
    assert_eq!(stats["error_count"], 2, "{run:?}");
    assert_eq!(
        db.rows("SELECT name, age::text FROM people ORDER BY name"),
        vec![
            vec![Some("ann".into()), Some("30".into())],
            vec![Some("cy".into()), Some("25".into())],
        ]
    );
    let mut lines = rejects_lines(&rejects);
    lines[1..].sort();
    assert_eq!(
        lines,
        vec![
            vec!["row_number", "column", "reason", "name", "age"],
            vec![
                "3",
                "",
                "invalid UTF-8 (people.csv!3:3)",
                "b\u{fffd}b",
                "41"
            ],
            vec!["5", "", "invalid UTF-8 (people.csv!5:5)", "\u{fffd}", ""],
        ]
    );
}

#[test]
fn an_invalid_utf8_record_is_rejected_and_the_rest_load_sequential() {
    invalid_utf8_record_is_rejected_and_the_rest_load("sequential");
}

#[test]
fn an_invalid_utf8_record_is_rejected_and_the_rest_load_copy() {
    invalid_utf8_record_is_rejected_and_the_rest_load("copy");
}

#[test]
fn an_invalid_utf8_header_is_fatal_and_suggests_encoding() {
    let dir = TempDir::new();
    let file = dir.path("people.csv");
    std::fs::write(&file, b"n\xe4me,age\nann,30\n").unwrap();
    let db = TestDb::new();
    let line = fatal_error_line(&db.importer(&["run", path_str(&file)]));
    assert!(line.contains("is not valid UTF-8"), "{line}");
    assert!(line.contains("--encoding"), "{line}");
}

#[test]
fn a_bad_record_after_blank_lines_is_reported_at_the_line_it_starts_on() {
    let dir = TempDir::new();
    let file = dir.path("people.csv");
    // line 1 header, 2 ann, 3-4 blank, 5 bob (bad), 6 blank, 7-8 a two-line quoted name (bad)
    std::fs::write(
        &file,
        "name,age\r\nann,30\r\n\r\n\r\nbob,abc\r\n\r\n\"cy\r\njr\",x\r\ndee,4\r\n",
    )
    .unwrap();
    let rejects = dir.path("rejects.csv");
    let db = TestDb::new();
    db.execute("CREATE TABLE people (name text, age integer)");
    let run = db.importer(&["run", "--rejects", path_str(&rejects), path_str(&file)]);
    assert_eq!(run.code, 3, "{run:?}");
    let numbers: Vec<String> = rejects_lines(&rejects)[1..]
        .iter()
        .map(|line| line[0].clone())
        .collect();
    assert_eq!(numbers, vec!["5", "7"], "{run:?}");
    assert_eq!(db.count("people"), 2);
}

#[test]
fn the_delimiter_is_sniffed_among_semicolon_tab_and_pipe() {
    let dir = TempDir::new();
    let db = TestDb::new();
    for (name, text) in [
        ("semicolon", "name;price\nann;1,5\nbob;2,25\n"),
        ("tab", "name\tprice\nann\t1,5\nbob\t2,25\n"),
        ("pipe", "name|price\nann|1,5\nbob|2,25\n"),
        ("comma", "name,price\nann,\"1,5\"\nbob,\"2,25\"\n"),
    ] {
        let file = dir.path(&format!("{name}.csv"));
        std::fs::write(&file, text).unwrap();
        let run = db.importer(&["run", path_str(&file)]);
        assert_eq!(run.code, 0, "{name}: {run:?}");
        assert_eq!(
            db.rows(&format!("SELECT name, price FROM {name} ORDER BY name")),
            vec![
                vec![Some("ann".into()), Some("1,5".into())],
                vec![Some("bob".into()), Some("2,25".into())],
            ],
            "{name}"
        );
    }
}

#[test]
fn delimiter_quote_encoding_and_null_string_flags_read_like_copy() {
    let dir = TempDir::new();
    let db = TestDb::new();
    db.execute("CREATE TABLE items (name text, note text, qty integer)");
    // windows-1252: é is 0xE9, € is 0x80; `'` quotes; \N is NULL
    let file = dir.path("items.txt");
    std::fs::write(&file, b"name:note:qty\ncaf\xe9:'a:b':\\N\n\x80:\\N:3\n").unwrap();
    let run = db.importer(&[
        "run",
        "-t",
        "items",
        "--input-format",
        "csv",
        "--delimiter",
        ":",
        "--quote",
        "'",
        "--encoding",
        "windows-1252",
        "--null-string",
        "\\N",
        path_str(&file),
    ]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(
        db.rows("SELECT name, note, qty::text FROM items ORDER BY qty NULLS FIRST"),
        vec![
            vec![Some("café".into()), Some("a:b".into()), None],
            vec![Some("€".into()), None, Some("3".into())],
        ]
    );

    // a tab delimiter by name, latin1 as WHATWG's windows-1252
    let file = dir.path("tabbed.csv");
    std::fs::write(&file, b"name\tnote\tqty\nna\xefve\tx\t1\n").unwrap();
    let run = db.importer(&[
        "run",
        "-t",
        "items",
        "--delimiter",
        "\\t",
        "--encoding",
        "latin1",
        path_str(&file),
    ]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(
        db.scalar("SELECT name FROM items WHERE qty = 1"),
        Some("naïve".into())
    );
}

#[test]
fn a_utf16_file_with_a_bom_is_decoded_without_encoding() {
    let dir = TempDir::new();
    let db = TestDb::new();
    let text = "name\tcity\r\nZoë\tKöln\r\n";
    for (name, bytes) in [
        (
            "le",
            [0xFF, 0xFE]
                .into_iter()
                .chain(text.encode_utf16().flat_map(u16::to_le_bytes))
                .collect::<Vec<u8>>(),
        ),
        (
            "be",
            [0xFE, 0xFF]
                .into_iter()
                .chain(text.encode_utf16().flat_map(u16::to_be_bytes))
                .collect(),
        ),
    ] {
        let file = dir.path(&format!("utf16_{name}.csv"));
        std::fs::write(&file, bytes).unwrap();
        let run = db.importer(&["run", path_str(&file)]);
        assert_eq!(run.code, 0, "{name}: {run:?}");
        assert_eq!(
            db.rows(&format!("SELECT name, city FROM utf16_{name}")),
            vec![vec![Some("Zoë".into()), Some("Köln".into())]],
            "{name}"
        );
    }
}

#[test]
fn csv_flags_with_a_workbook_are_a_usage_error() {
    let db = TestDb::new();
    let run = db.importer(&["run", "--delimiter", ";", "sales.xlsx"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr
            .contains("--delimiter applies to CSV input only, and sales.xlsx is not a .csv file"),
        "{run:?}"
    );
    assert!(run.stderr.contains("--input-format csv"), "{run:?}");
}

#[test]
fn a_csv_without_a_header_line_is_refused() {
    let dir = TempDir::new();
    let db = TestDb::new();
    let empty = dir.path("empty.csv");
    std::fs::write(&empty, "").unwrap();
    let line = fatal_error_line(&db.importer(&["run", path_str(&empty)]));
    assert_eq!(
        line,
        format!(
            "error: {} is empty (0 bytes): there is nothing to import",
            empty.display()
        )
    );
    for (name, text) in [
        ("blank", "\n\n,,\n"),
        ("numbers", "1,2.5,2024-01-02\n3,4,2024-01-03\n"),
    ] {
        let file = dir.path(&format!("{name}.csv"));
        std::fs::write(&file, text).unwrap();
        let line = fatal_error_line(&db.importer(&["run", path_str(&file)]));
        assert_eq!(
            line,
            format!(
                "error: {} has no header line: the first line of a CSV file must name the columns",
                file.display()
            ),
            "{name}"
        );
    }
}

#[test]
fn a_record_larger_than_64_mib_is_an_error_naming_its_line() {
    let dir = TempDir::new();
    let file = dir.path("huge.csv");
    let mut bytes = b"name\nann\n\n\"".to_vec();
    bytes.resize(bytes.len() + (64 << 20) + 1, b'x');
    std::fs::write(&file, bytes).unwrap();
    let db = TestDb::new();
    let line = fatal_error_line(&db.importer(&["run", path_str(&file)]));
    assert!(
        line.ends_with("the record on line 4 is larger than 64 MiB (an unclosed quote?)"),
        "{line}"
    );
}

#[test]
fn files_whose_content_is_not_their_name_say_what_they_are() {
    let dir = TempDir::new();
    let db = TestDb::new();
    let csv_xlsx = dir.path("export.xlsx");
    std::fs::write(&csv_xlsx, "name;city\nann;Oslo\n").unwrap();
    let html_xls = dir.path("report.xls");
    std::fs::write(
        &html_xls,
        "<html xmlns:x=\"urn:schemas-microsoft-com:office:excel\"><body><table><tr><td>1</td></tr></table></body></html>",
    )
    .unwrap();
    let cases = [
        (
            &csv_xlsx,
            "looks like CSV text, not an .xlsx workbook; rename it to .csv or pass --input-format csv",
        ),
        (
            &html_xls,
            "looks like HTML, not an .xls workbook (web exports often are; save it as .xlsx or .csv)",
        ),
        (&dir.0, "is a directory"),
    ];
    for (path, expected) in cases {
        let line = fatal_error_line(&db.importer(&["run", "-t", "t", path_str(path)]));
        assert!(line.contains(expected), "{line}");
        assert!(line.contains(path_str(path)), "{line}");
    }
    // and the suggested flag works
    let run = db.importer(&[
        "run",
        "--input-format",
        "csv",
        "-t",
        "export",
        path_str(&csv_xlsx),
    ]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(db.count("export"), 1);
}

#[test]
fn standard_input_is_read_as_csv_into_the_given_table() {
    let db = TestDb::new();
    let input = b"name;age\nann;30\nbob;abc\ncy;25\n";
    for stdin_name in ["-", "/dev/stdin"] {
        db.execute("DROP TABLE IF EXISTS piped");
        let (run, pid) = run_with_stdin(
            &db,
            &["run", "-t", "piped", "--format", "json", stdin_name],
            input,
        );
        assert_eq!(run.code, 0, "{run:?}");
        let stats = run.json();
        assert_eq!(stats["file"], "stdin", "{run:?}");
        assert_eq!(stats["total_records"], 3, "{run:?}");
        // inferred over all rows: "abc" makes age text, so every row goes in
        assert_eq!(stats["success_count"], 3, "{run:?}");
        assert_eq!(db.count("piped"), 3);
        let leftovers: Vec<_> = std::fs::read_dir(std::env::temp_dir())
            .unwrap()
            .filter_map(Result::ok)
            .filter(|entry| {
                entry
                    .file_name()
                    .to_string_lossy()
                    .starts_with(&format!("importer-stdin-{pid}-"))
            })
            .collect();
        assert!(leftovers.is_empty(), "the spool is removed: {leftovers:?}");
    }
    // the ledger hashed the content: the same bytes again are skipped
    let (run, _) = run_with_stdin(&db, &["run", "-t", "piped", "--skip-unchanged", "-"], input);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.starts_with("skipped: stdin"), "{run:?}");
    assert_eq!(
        db.scalar("SELECT file_path FROM importer.runs ORDER BY id LIMIT 1"),
        Some("-".into())
    );
}

#[test]
fn standard_input_without_table_is_a_usage_error() {
    let db = TestDb::new();
    let (run, _) = run_with_stdin(&db, &["run", "-"], b"name\nann\n");
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("needs --table"), "{run:?}");
}
