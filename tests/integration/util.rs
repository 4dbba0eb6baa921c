//! Test support: one fresh PostgreSQL database per test, and a runner for the real binary.
//!
//! `TestDb::new()` reads `DATABASE_URL` (else the docker-compose.yml URL), creates
//! `importer_test_<uuid>`, and drops it again when the test ends, terminating its backends
//! first. Without a reachable server the test fails and says how to get one.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio::runtime::Runtime;

/// The docker-compose.yml server, used when DATABASE_URL is not set.
const DEFAULT_DATABASE_URL: &str = "postgres://importer:importer@localhost:5432/importer";

/// A database of its own for one test.
pub struct TestDb {
    /// URL of the test database, for `--database-url` / DATABASE_URL.
    pub url: String,
    /// Name of the test database.
    pub name: String,
    admin_url: String,
    pool: Option<PgPool>,
    runtime: Runtime,
}

impl TestDb {
    /// Creates a fresh database on the server of DATABASE_URL.
    pub fn new() -> TestDb {
        let admin_url =
            std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_DATABASE_URL.to_string());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("test runtime starts");
        let name = format!("importer_test_{}", uuid::Uuid::new_v4().simple());
        let url = with_database(&admin_url, &name);
        let pool = runtime.block_on(async {
            let admin = PgPoolOptions::new()
                .max_connections(1)
                .connect(&admin_url)
                .await
                .unwrap_or_else(|error| {
                    panic!(
                        "cannot reach PostgreSQL for the tests ({error}). Start one with \
                         `docker compose up -d --wait`, or set DATABASE_URL to a server where \
                         this user may CREATE DATABASE (e.g. postgres://postgres@127.0.0.1:5432/postgres)"
                    )
                });
            sqlx::query(&format!("CREATE DATABASE \"{name}\""))
                .execute(&admin)
                .await
                .expect("test database can be created");
            admin.close().await;
            PgPoolOptions::new()
                .max_connections(2)
                .connect(&url)
                .await
                .expect("test database accepts connections")
        });
        TestDb {
            url,
            name,
            admin_url,
            pool: Some(pool),
            runtime,
        }
    }

    /// Runs SQL statements (no results), e.g. fixtures/businesses.sql.
    pub fn execute(&self, sql: &str) {
        let pool = self.pool();
        self.runtime.block_on(async {
            sqlx::raw_sql(sql)
                .execute(pool)
                .await
                .unwrap_or_else(|error| panic!("SQL failed: {error}\n{sql}"));
        });
    }

    /// Runs a query and returns each row's columns as text (NULL as `None`), in column
    /// order. Values go through `row_to_json`, so cast to text in the query where the exact
    /// text form matters (timestamps, say).
    pub fn rows(&self, sql: &str) -> Vec<Vec<Option<String>>> {
        let wrapped = format!(
            "SELECT ARRAY(SELECT value FROM json_each_text(row_to_json(q)) WITH ORDINALITY ORDER BY ordinality) FROM ({sql}) q"
        );
        let pool = self.pool();
        self.runtime.block_on(async {
            let rows: Vec<(Vec<Option<String>>,)> = sqlx::query_as(&wrapped)
                .fetch_all(pool)
                .await
                .unwrap_or_else(|error| panic!("query failed: {error}\n{sql}"));
            rows.into_iter().map(|(row,)| row).collect()
        })
    }

    /// The single value of a one-row, one-column query, as text.
    pub fn scalar(&self, sql: &str) -> Option<String> {
        let rows = self.rows(sql);
        assert_eq!(rows.len(), 1, "expected one row from {sql}");
        rows[0][0].clone()
    }

    /// `SELECT count(*)` of a table.
    pub fn count(&self, table: &str) -> i64 {
        self.scalar(&format!("SELECT count(*) FROM {table}"))
            .expect("count is not null")
            .parse()
            .expect("count is a number")
    }

    fn pool(&self) -> &PgPool {
        self.pool.as_ref().expect("pool lives until drop")
    }

    /// Runs the importer binary with DATABASE_URL pointing at this database.
    pub fn importer(&self, args: &[&str]) -> Run {
        run_importer(args, Some(&self.url))
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.take() {
            self.runtime.block_on(pool.close());
        }
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        self.runtime.block_on(async move {
            if let Ok(admin) = PgPoolOptions::new().max_connections(1).connect(&admin_url).await {
                let terminate = "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()";
                sqlx::query(terminate).bind(&name).execute(&admin).await.ok();
                sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\""))
                    .execute(&admin)
                    .await
                    .ok();
                admin.close().await;
            }
        });
    }
}

/// `url` with its database replaced by `database`.
fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_end = base.find("://").map_or(0, |scheme| scheme + 3);
    let server = match base[authority_end..].find('/') {
        Some(slash) => &base[..authority_end + slash],
        None => base,
    };
    match query {
        Some(query) => format!("{server}/{database}?{query}"),
        None => format!("{server}/{database}"),
    }
}

/// What one run of the binary did.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// The stdout parsed as the one JSON object of `--format json`.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.stdout.trim()).unwrap_or_else(|error| {
            panic!(
                "stdout is not one JSON object ({error}):\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }
}

impl std::fmt::Debug for Run {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            formatter,
            "exit {}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs the binary; `database_url` is exported as DATABASE_URL when given.
pub fn run_importer(args: &[&str], database_url: Option<&str>) -> Run {
    run_importer_with_env(args, database_url, &[])
}

/// Runs the binary with `environment` set on top (PGHOST, RUST_LOG, ...). The test's own
/// DATABASE_URL and PG* variables never reach it, so runs stay hermetic.
pub fn run_importer_with_env(
    args: &[&str],
    database_url: Option<&str>,
    environment: &[(&str, &str)],
) -> Run {
    let mut command = importer_command(args, database_url, environment);
    let Output {
        status,
        stdout,
        stderr,
    } = command.output().expect("the importer binary runs");
    Run {
        code: status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

/// The command [`run_importer_with_env`] runs, for tests that spawn it and act meanwhile.
pub fn importer_command(
    args: &[&str],
    database_url: Option<&str>,
    environment: &[(&str, &str)],
) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_importer"));
    command
        .args(args)
        .env("RUST_LOG", "warn")
        .env_remove("DATABASE_URL");
    for name in importer::sink::conninfo::PG_ENVIRONMENT {
        command.env_remove(name);
    }
    if let Some(url) = database_url {
        command.env("DATABASE_URL", url);
    }
    command.envs(environment.iter().copied());
    command
}

/// A committed fixture under tests/fixtures/.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// The project's fixtures/ folder (businesses.xlsx, businesses.sql).
pub fn project_fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

/// A fresh temporary directory, removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        let path =
            std::env::temp_dir().join(format!("importer-test-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&path).expect("temp dir is created");
        TempDir(path)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.0).ok();
    }
}

#[test]
fn with_database_replaces_only_the_database() {
    assert_eq!(
        with_database("postgres://u:p@h:5432/db", "t"),
        "postgres://u:p@h:5432/t"
    );
    assert_eq!(
        with_database("postgres://h/db?sslmode=disable", "t"),
        "postgres://h/t?sslmode=disable"
    );
    assert_eq!(with_database("postgres://h", "t"), "postgres://h/t");
}

/// One cell of a workbook written by [`write_workbook`].
#[derive(Debug, Clone)]
pub enum Cell {
    /// Nothing is written.
    Empty,
    Text(String),
    Number(f64),
    Bool(bool),
    /// A real date cell: "YYYY-MM-DD" (date format) or "YYYY-MM-DD HH:MM:SS" (date-time format).
    Date(String),
}

impl From<&str> for Cell {
    fn from(text: &str) -> Cell {
        Cell::Text(text.to_string())
    }
}

impl From<f64> for Cell {
    fn from(value: f64) -> Cell {
        Cell::Number(value)
    }
}

impl From<bool> for Cell {
    fn from(value: bool) -> Cell {
        Cell::Bool(value)
    }
}

/// Writes an .xlsx file with typed cells: one `(sheet name, rows)` per sheet, the first row
/// being sheet row 1.
pub fn write_workbook(path: &Path, sheets: &[(&str, Vec<Vec<Cell>>)]) {
    let date_format = rust_xlsxwriter::Format::new().set_num_format("yyyy-mm-dd");
    let datetime_format = rust_xlsxwriter::Format::new().set_num_format("yyyy-mm-dd hh:mm:ss");
    let mut workbook = rust_xlsxwriter::Workbook::new();
    for (sheet_name, rows) in sheets {
        let sheet = workbook.add_worksheet();
        sheet.set_name(*sheet_name).expect("valid sheet name");
        for (row_index, row) in rows.iter().enumerate() {
            let row_index = row_index as u32;
            for (column_index, cell) in row.iter().enumerate() {
                let column_index = column_index as u16;
                match cell {
                    Cell::Empty => continue,
                    Cell::Text(text) => sheet.write_string(row_index, column_index, text),
                    Cell::Number(value) => sheet.write_number(row_index, column_index, *value),
                    Cell::Bool(value) => sheet.write_boolean(row_index, column_index, *value),
                    Cell::Date(text) => {
                        let datetime = rust_xlsxwriter::ExcelDateTime::parse_from_str(text)
                            .expect("test dates are valid");
                        let format = if text.len() > 10 {
                            &datetime_format
                        } else {
                            &date_format
                        };
                        sheet.write_datetime_with_format(row_index, column_index, &datetime, format)
                    }
                }
                .expect("cell is written");
            }
        }
    }
    workbook.save(path).expect("workbook is saved");
}

/// Checks a fatal run: exit 1, exactly one `error: ` line on stderr, every other stderr line
/// a log line, no panic or backtrace. Returns the error line.
pub fn fatal_error_line(run: &Run) -> String {
    assert_eq!(run.code, 1, "fatal errors exit 1\n{run:?}");
    assert!(
        !run.stderr.contains("panicked") && !run.stderr.contains("backtrace"),
        "no panic\n{run:?}"
    );
    let error_lines: Vec<&str> = run
        .stderr
        .lines()
        .filter(|line| line.starts_with("error: "))
        .collect();
    assert_eq!(error_lines.len(), 1, "one `error: ` line\n{run:?}");
    for line in run.stderr.lines() {
        let is_log_line = line.starts_with(|first: char| first.is_ascii_digit())
            && (line.contains(" WARN ") || line.contains(" ERROR "));
        assert!(
            line.starts_with("error: ") || is_log_line,
            "stderr holds the error line and log lines only, not {line:?}\n{run:?}"
        );
    }
    error_lines[0].to_string()
}

/// Which reader a differential test reads with: ours, or calamine as the oracle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Ours,
    Oracle,
}

/// Every non-blank row of `sheet` read by `side`'s reader of the file's format, or its
/// error as text.
pub fn read_sheet(
    path: &Path,
    sheet: &str,
    side: Side,
) -> Result<Vec<importer::source::SheetRow>, String> {
    use importer::source::{XlsReader, XlsxReader};
    let (xlsx_reader, xls_reader) = match side {
        Side::Ours => (XlsxReader::Fast, XlsReader::Fast),
        Side::Oracle => (XlsxReader::Calamine, XlsReader::Calamine),
    };
    let spec = importer::source::SourceSpec {
        path: path.to_path_buf(),
        sheet: Some(sheet.to_string()),
        header_row: 1,
        xlsx_reader,
        xls_reader,
        csv: importer::source::CsvOptions::default(),
    };
    let mut rows = Vec::new();
    importer::source::read_rows(&spec, &mut |row| {
        rows.push(row);
        std::ops::ControlFlow::Continue(())
    })
    .map_err(|error| format!("{error:#}"))?;
    Ok(rows)
}

/// Reads every sheet of `path` with both readers and returns the differences found. A sheet
/// both refuse is no difference when it has no header (a chart sheet, say) or, unless
/// `same_failure` is asked for, whatever the two errors say.
pub fn reader_differences(path: &Path, same_failure: bool) -> Vec<String> {
    use calamine::Reader;
    let names = match calamine::open_workbook_auto(path) {
        Ok(workbook) => workbook.sheet_names(),
        Err(error) => {
            return vec![format!(
                "{}: calamine cannot open it: {error}",
                path.display()
            )];
        }
    };
    let mut found = Vec::new();
    for name in names {
        let oracle = read_sheet(path, &name, Side::Oracle);
        let fast = read_sheet(path, &name, Side::Ours);
        match (oracle, fast) {
            (Ok(oracle), Ok(fast)) => {
                if oracle.len() != fast.len() {
                    found.push(format!(
                        "{} sheet {name:?}: calamine reads {} rows, fast {}",
                        path.display(),
                        oracle.len(),
                        fast.len()
                    ));
                }
                if let Some((expected, actual)) = oracle
                    .iter()
                    .zip(&fast)
                    .find(|(expected, actual)| expected != actual)
                {
                    found.push(format!(
                        "{} sheet {name:?}: calamine {expected:?}\n  fast {actual:?}",
                        path.display()
                    ));
                }
            }
            (Err(oracle), Err(fast)) => {
                let no_header = oracle.contains("has no header") && fast.contains("has no header");
                if same_failure && !no_header {
                    found.push(format!(
                        "{} sheet {name:?}: both fail: calamine {oracle:?}, fast {fast:?}",
                        path.display()
                    ));
                }
            }
            (oracle, fast) => found.push(format!(
                "{} sheet {name:?}: calamine {:?}, fast {:?}",
                path.display(),
                oracle.map(|rows| rows.len()),
                fast.map(|rows| rows.len())
            )),
        }
    }
    found
}
