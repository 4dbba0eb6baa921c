//! Conventions users meet around a run: rejected-row warnings and cell references, progress
//! on stderr, `-q`, `NO_COLOR`, shell completions and the man page, `generate`'s output,
//! and the default table name.

use std::path::Path;
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::util::{
    Cell, Run, TempDir, TestDb, fatal_error_line, project_fixture, run_importer, write_workbook,
};

fn path_str(path: &Path) -> &str {
    path.to_str().expect("temp paths are UTF-8")
}

/// Runs the binary against `db` with `RUST_LOG` as given (`None`: unset) and extra
/// environment variables.
fn importer_with_env(
    db: Option<&TestDb>,
    rust_log: Option<&str>,
    env: &[(&str, &str)],
    args: &[&str],
) -> Run {
    let mut command = Command::new(env!("CARGO_BIN_EXE_importer"));
    command
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("RUST_LOG")
        .env_remove("NO_COLOR");
    if let Some(db) = db {
        command.env("DATABASE_URL", &db.url);
    }
    if let Some(rust_log) = rust_log {
        command.env("RUST_LOG", rust_log);
    }
    command.envs(env.iter().copied());
    let output = command.output().expect("the importer binary runs");
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Runs the binary under a pseudo-terminal (util-linux `script`), so stderr is a terminal;
/// returns the exit code and everything the terminal received.
fn importer_on_a_terminal(db: &TestDb, env: &[(&str, &str)], args: &[&str]) -> (i32, String) {
    on_a_terminal(db, env, env!("CARGO_BIN_EXE_importer"), args)
}

/// Runs `program` with `args` under a pseudo-terminal, as [`importer_on_a_terminal`] does.
fn on_a_terminal(db: &TestDb, env: &[(&str, &str)], program: &str, args: &[&str]) -> (i32, String) {
    let mut line = shell_quote(program);
    for arg in args {
        line.push(' ');
        line.push_str(&shell_quote(arg));
    }
    let output = Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .env_remove("RUST_LOG")
        .env_remove("NO_COLOR")
        .env("DATABASE_URL", &db.url)
        .env("TERM", "xterm")
        .envs(env.iter().copied())
        .output()
        .expect("util-linux `script` runs (apt-get install bsdutils)");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// Whether text holds an ANSI colour (SGR) sequence, `ESC [ ... m`.
fn has_colour(text: &str) -> bool {
    text.split('\x1b').skip(1).any(|sequence| {
        sequence.strip_prefix('[').is_some_and(|rest| {
            let parameters: String = rest
                .chars()
                .take_while(|ch| ch.is_ascii_digit() || *ch == ';')
                .collect();
            rest[parameters.len()..].starts_with('m')
        })
    })
}

/// Rejected-row warning lines of a run's stderr.
fn rejection_warnings(run: &Run) -> Vec<&str> {
    run.stderr
        .lines()
        .filter(|line| line.contains("row rejected"))
        .collect()
}

/// Every record of the rejects file, header line included.
fn read_csv_records(path: &Path) -> Vec<Vec<String>> {
    csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_path(path)
        .expect("the rejects file opens")
        .records()
        .map(|record| {
            record
                .expect("rejects lines are CSV")
                .iter()
                .map(str::to_string)
                .collect()
        })
        .collect()
}

const PEOPLE_TABLE: &str = "CREATE TABLE people (name text NOT NULL, \
     email text CONSTRAINT people_email_key UNIQUE, \
     age integer CONSTRAINT age_not_negative CHECK (age >= 0), note text)";

/// A sheet "Q3 Sales" whose columns are in another order than the table's: Note (A), Age
/// (B), Email (C), Name (D). Rows 3 to 6 are bad, each in its own way; the cell values
/// that make them bad start with "secret".
fn people_workbook(path: &Path) {
    let text = |value: &str| Cell::from(value);
    let rows = vec![
        vec![text("Note"), text("Age"), text("Email"), text("Name")],
        vec![text("ok"), Cell::Number(30.0), text("a@x"), text("Ann")],
        vec![
            text("bad age"),
            text("secret-3.5"),
            text("b@x"),
            text("Bob"),
        ],
        vec![text("dup"), Cell::Number(31.0), text("a@x"), text("Cy")],
        vec![
            text("negative"),
            Cell::Number(-5.0),
            text("secret-d@x"),
            text("Dee"),
        ],
        vec![
            text("no name"),
            Cell::Number(40.0),
            text("e@x"),
            Cell::Empty,
        ],
        vec![text("ok too"), Cell::Number(50.0), text("f@x"), text("Fay")],
    ];
    write_workbook(path, &[("Q3 Sales", rows)]);
}

#[test]
fn rejections_are_located_by_cell_in_the_warnings_and_the_rejects_file() {
    let dir = TempDir::new();
    let workbook = dir.path("people.xlsx");
    people_workbook(&workbook);
    let rejects = dir.path("rejects.csv");
    for method in ["sequential", "batch", "copy"] {
        let db = TestDb::new();
        db.execute(PEOPLE_TABLE);
        let run = db.importer(&[
            "run",
            "-m",
            method,
            "--rejects",
            path_str(&rejects),
            path_str(&workbook),
        ]);
        assert_eq!(run.code, 3, "{method}\n{run:?}");
        assert_eq!(db.count("people"), 2, "{method}");

        // the file: the reason, then the reference as a spreadsheet shows it
        let mut records = read_csv_records(&rejects);
        assert_eq!(
            records[0],
            [
                "row_number",
                "column",
                "reason",
                "Note",
                "Age",
                "Email",
                "Name"
            ],
            "{method}: the contract's columns, nothing added"
        );
        let mut rejected: Vec<(String, String, String)> = records
            .split_off(1)
            .into_iter()
            .map(|record| (record[0].clone(), record[1].clone(), record[2].clone()))
            .collect();
        rejected.sort();
        let line = |row: &str, column: &str, reason: &str| {
            (row.to_string(), column.to_string(), reason.to_string())
        };
        assert_eq!(
            rejected,
            vec![
                line("3", "age", "not an integer: secret-3.5 ('Q3 Sales'!B3)"),
                line(
                    "4",
                    "",
                    "duplicate key value violates unique constraint \"people_email_key\" ('Q3 Sales'!4:4)"
                ),
                line(
                    "5",
                    "",
                    "new row for relation \"people\" violates check constraint \"age_not_negative\" ('Q3 Sales'!5:5)"
                ),
                line("6", "name", "null value in NOT NULL column ('Q3 Sales'!D6)"),
            ],
            "{method}"
        );

        // the warnings: row, column, cell and the reason, never a cell value
        let warnings = rejection_warnings(&run);
        assert_eq!(warnings.len(), 4, "{method}\n{run:?}");
        assert!(
            !run.stderr.contains("secret") && !run.stderr.contains("a@x"),
            "{method}: no cell value is logged\n{run:?}"
        );
        let warning = |row_number: &str| {
            warnings
                .iter()
                .find(|line| line.contains(&format!("row_number={row_number} ")))
                .unwrap_or_else(|| panic!("{method}: a warning for row {row_number}\n{run:?}"))
                .to_string()
        };
        let row_3 = warning("3");
        assert!(
            row_3.contains("column=age")
                && row_3.contains("cell='Q3 Sales'!B3")
                && row_3.ends_with("reason=not an integer"),
            "{method}: {row_3}"
        );
        let row_4 = warning("4");
        assert!(
            row_4.contains("cell='Q3 Sales'!4:4")
                && row_4.contains(
                    "reason=duplicate key value violates unique constraint \"people_email_key\""
                ),
            "{method}: the server's message, without DETAIL: {row_4}"
        );
        let row_5 = warning("5");
        assert!(
            row_5.contains("age_not_negative") && row_5.contains("cell='Q3 Sales'!5:5"),
            "{method}: {row_5}"
        );
        let row_6 = warning("6");
        assert!(
            row_6.contains("column=name") && row_6.contains("cell='Q3 Sales'!D6"),
            "{method}: {row_6}"
        );
        assert!(
            !run.stderr.contains("more rejected rows"),
            "{method}: every rejection was warned\n{run:?}"
        );
    }
}

#[test]
fn a_csv_rejection_names_the_file_as_its_sheet() {
    let dir = TempDir::new();
    let csv = dir.path("people.csv");
    std::fs::write(&csv, "name,age\nann,1\nbob,secret\n").expect("temp file is writable");
    let rejects = dir.path("rejects.csv");
    let db = TestDb::new();
    db.execute(PEOPLE_TABLE);
    let run = db.importer(&["run", "--rejects", path_str(&rejects), path_str(&csv)]);
    assert_eq!(run.code, 3, "{run:?}");
    let records = read_csv_records(&rejects);
    assert_eq!(
        records[1][..3],
        ["3", "age", "not an integer: secret (people.csv!B3)"]
    );
    assert!(
        rejection_warnings(&run)[0].contains("cell=people.csv!B3"),
        "{run:?}"
    );
}

#[test]
fn after_ten_warnings_one_line_counts_the_other_rejected_rows() {
    let dir = TempDir::new();
    let csv = dir.path("people.csv");
    let mut text = String::from("name,age\n");
    for index in 0..26 {
        // 16 bad rows, then 10 good ones
        let age = if index < 16 {
            format!("secret{index}")
        } else {
            index.to_string()
        };
        text.push_str(&format!("p{index},{age}\n"));
    }
    std::fs::write(&csv, text).expect("temp file is writable");
    let rejects = dir.path("rejects.csv");

    let db = TestDb::new();
    db.execute(PEOPLE_TABLE);
    let run = db.importer(&["run", path_str(&csv)]);
    assert_eq!(run.code, 3, "{run:?}");
    assert_eq!(rejection_warnings(&run).len(), 10, "{run:?}");
    let closing: Vec<&str> = run
        .stderr
        .lines()
        .filter(|line| line.contains("more rejected rows"))
        .collect();
    assert_eq!(closing.len(), 1, "{run:?}");
    assert!(
        closing[0].contains("6 more rejected rows; pass --rejects FILE to see them all"),
        "{run:?}"
    );

    let db = TestDb::new();
    db.execute(PEOPLE_TABLE);
    let run = db.importer(&["run", "--rejects", path_str(&rejects), path_str(&csv)]);
    assert_eq!(run.code, 3, "{run:?}");
    assert_eq!(rejection_warnings(&run).len(), 10, "{run:?}");
    let expected = format!("6 more rejected rows, see --rejects {}", rejects.display());
    assert_eq!(
        run.stderr.matches(&expected).count(),
        1,
        "one closing line: {expected}\n{run:?}"
    );
    assert_eq!(
        read_csv_records(&rejects).len(),
        17,
        "every row is in the file"
    );
    assert!(!run.stderr.contains("secret"), "{run:?}");
}

/// The JSON log lines of a run: (seconds since the first line, fields).
fn json_log_lines(run: &Run) -> Vec<(f64, serde_json::Value)> {
    let mut first: Option<chrono::DateTime<chrono::FixedOffset>> = None;
    run.stderr
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .map(|line| {
            let timestamp = chrono::DateTime::parse_from_rfc3339(
                line["timestamp"]
                    .as_str()
                    .expect("log lines have a timestamp"),
            )
            .expect("timestamps are RFC 3339");
            let start = *first.get_or_insert(timestamp);
            let seconds = (timestamp - start).num_milliseconds() as f64 / 1000.0;
            (seconds, line["fields"].clone())
        })
        .collect()
}

#[test]
fn progress_lines_come_every_5_seconds_with_total_percent_and_a_whole_rate() {
    let dir = TempDir::new();
    let workbook = dir.path("businesses.xlsx");
    let generated = run_importer(
        &[
            "generate",
            "--rows",
            "24000",
            "--seed",
            "5",
            path_str(&workbook),
        ],
        None,
    );
    assert_eq!(generated.code, 0, "{generated:?}");
    let db = TestDb::new();
    db.execute(&std::fs::read_to_string(project_fixture("businesses.sql")).unwrap());
    // a slow server: each INSERT statement takes half a second, so the 24 statements of
    // this run take about 12 s, whatever the machine's speed
    db.execute(
        "CREATE FUNCTION slow_down() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN PERFORM pg_sleep(0.5); RETURN NULL; END $$; \
         CREATE TRIGGER slow_down AFTER INSERT ON businesses \
         FOR EACH STATEMENT EXECUTE FUNCTION slow_down();",
    );
    let run = importer_with_env(
        Some(&db),
        Some("info"),
        &[],
        &[
            "run",
            "--log-format",
            "json",
            "-m",
            "batch",
            "-w",
            "1",
            "-b",
            "1000",
            path_str(&workbook),
        ],
    );
    assert_eq!(run.code, 0, "{run:?}");
    let lines = json_log_lines(&run);
    let started = lines
        .iter()
        .find(|(_, fields)| fields["message"] == "import started")
        .map(|(seconds, _)| *seconds)
        .unwrap_or_else(|| panic!("an import started line\n{run:?}"));
    let progress: Vec<&(f64, serde_json::Value)> = lines
        .iter()
        .filter(|(_, fields)| fields["message"] == "progress" && fields["phase"] == "import")
        .collect();
    assert!(
        progress.len() >= 2,
        "a 12 s run logs progress at 5 s and 10 s\n{run:?}"
    );
    let mut previous = started;
    for (seconds, fields) in &progress {
        let gap = seconds - previous;
        assert!(
            (4.0..7.5).contains(&gap),
            "progress lines come every 5 s, not {gap} s apart\n{run:?}"
        );
        previous = *seconds;
        assert_eq!(fields["total_rows"], 24000, "{fields}");
        let row_count = fields["row_count"].as_u64().expect("row_count");
        assert_eq!(
            fields["percent"].as_u64(),
            Some(row_count * 100 / 24000),
            "{fields}"
        );
        assert!(
            fields["rows_per_second"].as_u64().is_some(),
            "the rate is a whole number: {fields}"
        );
    }
}

#[test]
fn the_inference_pass_is_announced_and_its_bar_named() {
    let dir = TempDir::new();
    let csv = dir.path("fresh.csv");
    let mut text = String::from("id,label\n");
    for index in 0..2000 {
        text.push_str(&format!("{index},row {index}\n"));
    }
    std::fs::write(&csv, text).expect("temp file is writable");

    let db = TestDb::new();
    let run = importer_with_env(Some(&db), Some("info"), &[], &["run", path_str(&csv)]);
    assert_eq!(run.code, 0, "{run:?}");
    let inferring = run
        .stderr
        .find("inferring column types")
        .unwrap_or_else(|| panic!("the inference pass is announced\n{run:?}"));
    let created = run
        .stderr
        .find("created table")
        .expect("the table is created");
    assert!(inferring < created, "{run:?}");

    // on a terminal the bar says what it is doing, and shows no ETA before the first row
    let db = TestDb::new();
    let (code, screen) = importer_on_a_terminal(&db, &[], &["run", path_str(&csv)]);
    assert_eq!(code, 0, "{screen}");
    assert!(screen.contains("inferring column types"), "{screen}");
    assert_eq!(db.count("fresh"), 2000);
}

#[test]
fn no_eta_is_shown_before_the_first_row() {
    let dir = TempDir::new();
    let workbook = dir.path("businesses.xlsx");
    let generated = run_importer(
        &[
            "generate",
            "--rows",
            "3000",
            "--seed",
            "5",
            path_str(&workbook),
        ],
        None,
    );
    assert_eq!(generated.code, 0, "{generated:?}");
    let db = TestDb::new();
    db.execute(&std::fs::read_to_string(project_fixture("businesses.sql")).unwrap());
    let (code, screen) = importer_on_a_terminal(&db, &[], &["run", path_str(&workbook)]);
    assert_eq!(code, 0, "{screen}");
    // every drawing of the bar at row 0 (of 3000 declared), cut at cursor movements
    let at_zero: Vec<&str> = screen
        .split(['\r', '\n', '\x1b'])
        .filter(|drawn| drawn.contains(" 0/3,000 rows"))
        .collect();
    assert!(!at_zero.is_empty(), "the bar is drawn at row 0\n{screen:?}");
    for drawn in at_zero {
        assert!(!drawn.contains("ETA"), "{drawn:?}");
        assert!(drawn.contains("0 rows/s"), "a whole rate: {drawn:?}");
    }
}

#[test]
fn no_color_turns_colours_off_on_a_terminal() {
    let dir = TempDir::new();
    let csv = dir.path("people.csv");
    std::fs::write(&csv, "name,age\nann,1\nbob,old\n").expect("temp file is writable");
    let db = TestDb::new();
    db.execute(PEOPLE_TABLE);
    let (code, coloured) = importer_on_a_terminal(&db, &[], &["run", path_str(&csv)]);
    assert_eq!(code, 3, "{coloured}");
    assert!(
        has_colour(&coloured),
        "a terminal gets colours\n{coloured:?}"
    );
    for no_color in ["1", "true"] {
        let (code, plain) = importer_on_a_terminal(
            &db,
            &[("NO_COLOR", no_color)],
            &["run", "-t", "people", path_str(&csv)],
        );
        assert_eq!(code, 3, "{plain}");
        assert!(plain.contains("row rejected"), "{plain}");
        assert!(!has_colour(&plain), "NO_COLOR={no_color}\n{plain:?}");
    }
}

#[test]
fn quiet_shows_only_warnings_and_errors_and_no_progress() {
    let dir = TempDir::new();
    let csv = dir.path("people.csv");
    std::fs::write(&csv, "name,age\nann,1\nbob,old\n").expect("temp file is writable");
    let db = TestDb::new();
    db.execute(PEOPLE_TABLE);
    let run = importer_with_env(Some(&db), None, &[], &["run", path_str(&csv)]);
    assert!(run.stderr.contains(" INFO "), "info by default\n{run:?}");
    for quiet in ["-q", "--quiet"] {
        let run = importer_with_env(
            Some(&db),
            None,
            &[],
            &["run", "--format", "json", quiet, path_str(&csv)],
        );
        assert_eq!(run.code, 3, "{run:?}");
        assert!(!run.stderr.contains(" INFO "), "{quiet}\n{run:?}");
        assert!(run.stderr.contains(" WARN "), "warnings stay\n{run:?}");
        assert_eq!(run.json()["error_count"], 1, "stdout is untouched");
    }
    let (code, screen) = importer_on_a_terminal(&db, &[], &["-q", "run", path_str(&csv)]);
    assert_eq!(code, 3, "{screen}");
    assert!(!screen.contains("rows/s"), "no bar\n{screen:?}");
    let run = importer_with_env(Some(&db), None, &[], &["-q", "-v", "run", path_str(&csv)]);
    assert_eq!(run.code, 2, "-q and -v contradict each other\n{run:?}");
}

#[test]
fn completions_and_the_man_page_are_printed_on_stdout() {
    let expected = [
        ("bash", "_importer()"),
        ("zsh", "#compdef importer"),
        ("fish", "complete -c importer"),
        ("powershell", "Register-ArgumentCompleter"),
        ("elvish", "edit:completion:arg-completer[importer]"),
    ];
    for (shell, marker) in expected {
        let run = run_importer(&["completions", shell], None);
        assert_eq!(run.code, 0, "{shell}\n{run:?}");
        assert!(run.stdout.contains(marker), "{shell}\n{run:?}");
        assert!(
            run.stdout.contains("--rejects") || run.stdout.contains("rejects"),
            "{shell}: the flags of run are completed"
        );
    }
    let run = run_importer(&["completions", "tcsh"], None);
    assert_eq!(run.code, 2, "{run:?}");

    let run = run_importer(&["man"], None);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains(".TH importer 1"), "{run:?}");
    for section in [
        ".SH NAME",
        ".SH SYNOPSIS",
        "completions",
        "generate",
        "importer run",
        "rejects",
        "inline\\-strings",
    ] {
        assert!(run.stdout.contains(section), "{section}\n{run:?}");
    }
}

fn sha256_of(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    format!("{:x}", Sha256::digest(bytes))
}

#[test]
fn generate_writes_the_same_bytes_for_the_same_seed_as_the_checked_in_fixture() {
    let dir = TempDir::new();
    let mut digests = Vec::new();
    for attempt in ["first.xlsx", "second.xlsx"] {
        let out = dir.path(attempt);
        // README's command for fixtures/businesses.xlsx
        let run = run_importer(
            &[
                "generate",
                "--rows",
                "10000",
                "--seed",
                "42",
                "--bad-rows",
                "0.0013",
                path_str(&out),
            ],
            None,
        );
        assert_eq!(run.code, 0, "{run:?}");
        digests.push(sha256_of(&out));
    }
    assert_eq!(digests[0], digests[1], "the same seed, the same bytes");
    assert_eq!(
        digests[0],
        sha256_of(&project_fixture("businesses.xlsx")),
        "fixtures/businesses.xlsx is what README's command writes"
    );

    // and the fixture loads as README says: 9,987 in, 13 rejected
    let db = TestDb::new();
    db.execute(&std::fs::read_to_string(project_fixture("businesses.sql")).unwrap());
    let run = db.importer(&[
        "run",
        "--format",
        "json",
        path_str(&project_fixture("businesses.xlsx")),
    ]);
    assert_eq!(run.code, 3, "{run:?}");
    let stats = run.json();
    assert_eq!(
        (&stats["success_count"], &stats["error_count"]),
        (&9987.into(), &13.into()),
        "{stats}"
    );
}

#[test]
fn generate_refuses_ods_and_other_extensions_before_writing_anything() {
    let dir = TempDir::new();
    for name in ["out.ods", "out.txt", "out"] {
        let out = dir.path(name);
        let run = run_importer(&["generate", "--rows", "10", path_str(&out)], None);
        assert_eq!(run.code, 2, "{name}: a usage error\n{run:?}");
        assert!(run.stderr.contains(".xlsx or .csv"), "{name}\n{run:?}");
        assert!(!out.exists(), "{name}: nothing is written");
    }
}

#[test]
fn generated_text_has_the_length_of_real_exports() {
    let dir = TempDir::new();
    let out = dir.path("businesses.csv");
    let run = run_importer(
        &["generate", "--rows", "3000", "--seed", "9", path_str(&out)],
        None,
    );
    assert_eq!(run.code, 0, "{run:?}");
    let db = TestDb::new();
    db.execute(&std::fs::read_to_string(project_fixture("businesses.sql")).unwrap());
    let run = db.importer(&["run", "-t", "businesses", path_str(&out)]);
    assert_eq!(run.code, 0, "{run:?}");
    let stats = db.rows(
        "SELECT min(length(description)), max(length(description)), \
                round(avg(length(description)))::int, \
                count(*) FILTER (WHERE address ~ ('^(Suite [0-9]+, )?[0-9]+ [A-Za-z]+ [A-Za-z]+, ' || city || ' ')), \
                count(*) FILTER (WHERE website ~ '^https://www\\.[a-z0-9-]+\\.example\\.com(/[a-z-]+)?$'), \
                round(avg(length(address)))::int \
           FROM businesses",
    );
    let number = |index: usize| -> i64 {
        stats[0][index]
            .as_deref()
            .expect("aggregates are not null")
            .parse()
            .expect("aggregates are numbers")
    };
    assert!(number(0) >= 60 && number(1) <= 200, "{stats:?}");
    assert!(
        (120..=140).contains(&number(2)),
        "mean about 130: {stats:?}"
    );
    assert_eq!(number(3), 3000, "every address is a full one: {stats:?}");
    assert_eq!(number(4), 3000, "every website is a URL: {stats:?}");
    assert!(number(5) >= 30, "{stats:?}");
}

#[test]
fn the_default_table_name_is_trimmed_of_underscores_at_the_ends() {
    let dir = TempDir::new();
    let csv = dir.path("Q3 Sales (final).csv");
    std::fs::write(&csv, "region\nnorth\n").expect("temp file is writable");
    let db = TestDb::new();
    let run = db.importer(&["run", "--format", "json", path_str(&csv)]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.json()["table"], "q3_sales_final");
    assert_eq!(db.count("q3_sales_final"), 1);

    let nameless = dir.path("(---).csv");
    std::fs::write(&nameless, "region\nnorth\n").expect("temp file is writable");
    let run = db.importer(&["run", path_str(&nameless)]);
    let line = fatal_error_line(&run);
    assert!(line.contains("--table"), "{line}");
    assert_eq!(
        db.scalar("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"),
        Some("1".to_string()),
        "nothing is created"
    );
}

#[test]
fn on_a_terminal_a_down_server_is_announced_at_once_with_how_long_it_is_retried() {
    let db = TestDb::new();
    let dir = TempDir::new();
    let csv = dir.path("people.csv");
    std::fs::write(&csv, "name\nann\n").expect("temp file is writable");
    // nothing listens on port 1: every attempt is refused, and the run gives up after 2 s
    let (code, screen) = importer_on_a_terminal(
        &db,
        &[],
        &[
            "run",
            "--database-url",
            "postgres://loader@127.0.0.1:1/warehouse",
            "--connect-timeout",
            "2",
            "-t",
            "people",
            path_str(&csv),
        ],
    );
    assert_eq!(code, 1, "{screen}");
    let announced = screen
        .lines()
        .find(|line| line.contains("retrying for up to 2 s (--connect-timeout 2)"))
        .unwrap_or_else(|| panic!("the retry is announced on the terminal\n{screen}"));
    assert!(announced.contains("127.0.0.1:1"), "{announced}");
    let error = screen
        .lines()
        .find(|line| line.starts_with("error: "))
        .unwrap_or_else(|| panic!("one error line\n{screen}"));
    assert!(!error.contains("docker compose"), "{error}");
}

#[test]
fn on_a_terminal_ctrl_c_clears_the_bar_before_the_warning_and_the_stats() {
    let db = TestDb::new();
    // a slow table: every row takes 50 ms, so the run is mid-way when Ctrl-C comes
    db.execute(
        "CREATE TABLE people (name text);
         CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN PERFORM pg_sleep(0.05); RETURN NEW; END $$;
         CREATE TRIGGER slow BEFORE INSERT ON people FOR EACH ROW EXECUTE FUNCTION slow();",
    );
    let dir = TempDir::new();
    let csv = dir.path("people.csv");
    let mut text = String::from("name\n");
    for number in 0..2000 {
        text.push_str(&format!("person {number}\n"));
    }
    std::fs::write(&csv, text).expect("temp file is writable");
    // `timeout` sends SIGINT (what Ctrl-C sends) 3 s in, and passes the importer's exit on
    let (code, screen) = on_a_terminal(
        &db,
        &[],
        "timeout",
        &[
            "--preserve-status",
            "-s",
            "INT",
            "3",
            env!("CARGO_BIN_EXE_importer"),
            "run",
            "-m",
            "sequential",
            "-t",
            "people",
            path_str(&csv),
        ],
    );
    assert_eq!(code, 130, "{screen:?}");
    let stopping = screen
        .find("stopping")
        .unwrap_or_else(|| panic!("the stop is logged\n{screen:?}"));
    let before = &screen[..stopping];
    let last_bar = before
        .rfind(" rows")
        .unwrap_or_else(|| panic!("the bar was drawn before Ctrl-C\n{screen:?}"));
    // indicatif clears its line with ESC [ 2K; the warning must not be drawn over the bar
    assert!(
        before[last_bar..].contains("\x1b[2K"),
        "the bar is cleared before the warning: {:?}",
        &before[last_bar.saturating_sub(200)..]
    );
    // and it stays gone: the rows already read are finished without it
    assert!(
        !screen[stopping..].contains("rows/s"),
        "no bar after Ctrl-C: {:?}",
        &screen[stopping..]
    );
}

/// The files under `dir`, as paths relative to it with `/` separators.
fn files_under(dir: &Path, prefix: &str, found: &mut Vec<String>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("src/ is readable")
        .map(|entry| entry.expect("a directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        if path.is_dir() {
            files_under(&path, &format!("{prefix}{name}/"), found);
        } else {
            found.push(format!("{prefix}{name}"));
        }
    }
}

#[test]
fn readme_layout_names_every_file_of_src() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    let section = readme
        .split("\n## Layout\n")
        .nth(1)
        .expect("README has a Layout section");
    let block = section
        .split("```")
        .nth(1)
        .expect("the Layout section has a code block");
    // entries: a line that starts with a path, and the lines indented under it
    let mut entries: Vec<(String, String)> = Vec::new();
    for line in block.lines() {
        match line.split_whitespace().next() {
            Some(path) if !line.starts_with(' ') => {
                entries.push((path.to_string(), line.to_string()));
            }
            Some(_) => {
                if let Some((_, text)) = entries.last_mut() {
                    text.push(' ');
                    text.push_str(line);
                }
            }
            None => {}
        }
    }
    let mut files = Vec::new();
    files_under(&root.join("src"), "src/", &mut files);
    let missing: Vec<&String> = files
        .iter()
        .filter(|file| {
            !entries.iter().any(|(path, text)| {
                *path == **file
                    || file.strip_prefix(path.as_str()).is_some_and(|rest| {
                        path.ends_with('/') && {
                            // each directory below the entry's, and the file's name, are named
                            let mut parts: Vec<String> =
                                rest.split('/').map(str::to_string).collect();
                            let name = parts.pop().unwrap_or_default();
                            parts.iter().all(|dir| text.contains(&format!("{dir}/")))
                                && text
                                    .split(|ch: char| {
                                        !(ch.is_alphanumeric() || ch == '_' || ch == '.')
                                    })
                                    .any(|word| word == name)
                        }
                    })
            })
        })
        .collect();
    assert!(
        missing.is_empty(),
        "README's Layout does not name {missing:?}"
    );
}
