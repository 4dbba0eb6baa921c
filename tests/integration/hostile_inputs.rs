//! Hostile and broken files (tests/fixtures/crashers/, found by mutating valid workbooks):
//! each one gets one clear `error:` line, or a normal import where the file is merely odd,
//! in bounded time and memory. The binary runs under an address-space cap, with its CPU
//! time and peak memory measured (wait4) and a wall-clock watchdog that fails the test
//! instead of letting it hang. File names and messages that hold control characters stay
//! one line.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::util::{Run, TempDir, TestDb, fatal_error_line, fixture};

/// Address space the importer may use (its contained reader gets less): far below what the
/// crashers claim, far above what they hold.
const ADDRESS_SPACE_BYTES: u64 = 4 << 30;

/// CPU seconds (importer and its reader child) one crasher may take. The slowest, a
/// gigabyte of whitespace read in three passes by the debug binary, takes about 45.
const MAX_CPU_SECONDS: f64 = 150.0;

/// Wall-clock time after which the run counts as hung: generous, because the machines
/// these tests run on may be shared and loaded many times over.
const HANG_AFTER: Duration = Duration::from_secs(600);

/// Peak resident memory, in KiB, for the workbook formats calamine may read: the contained
/// reader may use up to its limit (about 2 GiB for these sizes) before it is stopped.
const MAX_RSS_KIB_CONTAINED: u64 = 2_300_000;

/// Peak resident memory, in KiB, for our own streaming readers (.ods, and .xls by default).
const MAX_RSS_KIB_STREAMED: u64 = 400_000;

/// What a crasher must get.
#[derive(Debug, Clone, Copy)]
enum Expected {
    /// Exit 1 with one `error:` line containing this text.
    Fatal(&'static str),
    /// Exit 1 with one `error:` line, or a normal import (0 or 3): which one depends on the
    /// reader, and both are right.
    FatalOrImport,
    /// A normal import (the file is odd, not broken).
    Import,
}

/// A run of the binary with what it cost.
struct Measured {
    run: Run,
    cpu_seconds: f64,
    max_rss_kib: u64,
    wall: Duration,
}

/// Runs the importer with `args` under the address-space cap, measuring CPU and memory;
/// fails the test if it runs past [`HANG_AFTER`].
fn run_measured(args: &[&std::ffi::OsStr], database_url: &str) -> Measured {
    let mut command = Command::new(env!("CARGO_BIN_EXE_importer"));
    command
        .args(args)
        .env("RUST_LOG", "warn")
        .env("DATABASE_URL", database_url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: only setrlimit runs between fork and exec.
    unsafe {
        command.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: ADDRESS_SPACE_BYTES,
                rlim_max: ADDRESS_SPACE_BYTES,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let started = Instant::now();
    // reaped by wait4 below, which also gives its CPU time and peak memory
    #[allow(clippy::zombie_processes)]
    let mut child = command.spawn().expect("the importer binary starts");
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            pipe.read_to_end(&mut bytes).expect("the pipe is readable");
            String::from_utf8_lossy(&bytes).into_owned()
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("stdout is piped")));
    let stderr = drain(Box::new(child.stderr.take().expect("stderr is piped")));
    let pid = child.id() as libc::pid_t;
    let hung = Arc::new(AtomicBool::new(false));
    let (finished, finished_signal) = mpsc::channel::<()>();
    let watchdog = {
        let hung = Arc::clone(&hung);
        std::thread::spawn(move || {
            if finished_signal.recv_timeout(HANG_AFTER).is_err() {
                hung.store(true, Ordering::SeqCst);
                // SAFETY: kill takes a pid and a signal; the child is not reaped yet (the
                // main thread is still in wait4), so the pid is still ours
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        })
    };
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to overwrite.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `status` and `usage` are valid for wait4 to write.
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    finished.send(()).ok();
    watchdog.join().expect("the watchdog ends");
    assert_eq!(waited, pid, "wait4 reaps the importer");
    let wall = started.elapsed();
    assert!(
        !hung.load(Ordering::SeqCst),
        "the importer hung: killed after {HANG_AFTER:?} ({args:?})"
    );
    let seconds = |time: libc::timeval| time.tv_sec as f64 + time.tv_usec as f64 / 1e6;
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -libc::WTERMSIG(status)
    };
    Measured {
        run: Run {
            code,
            stdout: stdout.join().expect("stdout is drained"),
            stderr: stderr.join().expect("stderr is drained"),
        },
        cpu_seconds: seconds(usage.ru_utime) + seconds(usage.ru_stime),
        max_rss_kib: usage.ru_maxrss as u64,
        wall,
    }
}

/// Whether the binary has the xlsx reader choice (`--xlsx-reader calamine`), so the .xlsx
/// crashers are run through both readers once it exists.
fn has_xlsx_reader_choice() -> bool {
    let help = Command::new(env!("CARGO_BIN_EXE_importer"))
        .args(["run", "--help"])
        .output()
        .expect("the importer binary runs");
    String::from_utf8_lossy(&help.stdout).contains("--xlsx-reader")
}

/// Runs one crasher (a dry run into table `fz`, through every reader of its format) and
/// checks what it got, its cost, and that its stderr is clean. An .xls goes through our
/// reader (`expected`) and calamine's (`calamine`, which fails on other files than ours).
fn check_crasher(name: &str, expected: Expected, calamine: Option<Expected>) {
    let db = TestDb::new();
    let path = fixture(&format!("crashers/{name}"));
    let is_xlsx = name.ends_with(".xlsx");
    let is_xls = name.ends_with(".xls");
    // (extra arguments, what they get, whether calamine reads in its contained child)
    let mut variants: Vec<(Vec<&str>, Expected, bool)> = vec![(vec![], expected, is_xlsx)];
    if is_xlsx && has_xlsx_reader_choice() {
        variants.push((vec!["--xlsx-reader", "calamine"], expected, true));
    }
    if is_xls {
        variants.push((
            vec!["--xls-reader", "calamine"],
            calamine.expect("an .xls crasher says what calamine's reader gets"),
            true,
        ));
    }
    for (extra, expected, contained) in variants {
        let mut args: Vec<&std::ffi::OsStr> = ["run", "--dry-run", "-t", "fz"]
            .iter()
            .map(std::ffi::OsStr::new)
            .collect();
        args.extend(extra.iter().map(std::ffi::OsStr::new));
        args.push(path.as_os_str());
        let measured = run_measured(&args, &db.url);
        let label = format!("{name} {extra:?}");
        let run = &measured.run;
        match expected {
            Expected::Fatal(part) => {
                let line = fatal_error_line(run);
                assert!(line.contains(part), "{label}: {line:?} lacks {part:?}");
                check_line(&label, &line);
            }
            Expected::FatalOrImport if run.code == 1 => {
                let line = fatal_error_line(run);
                check_line(&label, &line);
            }
            Expected::FatalOrImport | Expected::Import => {
                assert!(
                    matches!(run.code, 0 | 3),
                    "{label}: a normal import exits 0 or 3\n{run:?}"
                );
                assert!(!run.stderr.contains("error:"), "{label}: {run:?}");
            }
        }
        assert!(
            !run.stderr.contains("panicked") && !run.stderr.contains("memory allocation of"),
            "{label}: no panic or allocator message reaches stderr\n{run:?}"
        );
        assert!(
            run.stderr.len() < 20_000,
            "{label}: stderr holds {} bytes",
            run.stderr.len()
        );
        assert!(
            measured.cpu_seconds < MAX_CPU_SECONDS,
            "{label}: {:.1} s of CPU (wall {:?})",
            measured.cpu_seconds,
            measured.wall
        );
        let max_rss_kib = if contained {
            MAX_RSS_KIB_CONTAINED
        } else {
            MAX_RSS_KIB_STREAMED
        };
        assert!(
            measured.max_rss_kib < max_rss_kib,
            "{label}: peak memory {} KiB (at most {max_rss_kib})",
            measured.max_rss_kib
        );
    }
}

/// The error line is one short line: no control characters, bounded length.
fn check_line(label: &str, line: &str) {
    assert!(
        !line.chars().any(char::is_control),
        "{label}: control character in {line:?}"
    );
    assert!(
        line.chars().count() <= 2_100,
        "{label}: error line of {} characters",
        line.chars().count()
    );
}

/// One test per crasher, named after it.
macro_rules! crashers {
    ($($test:ident: $file:literal => $expected:expr $(, calamine $calamine:expr)?;)*) => {
        $(
            #[test]
            fn $test() {
                #[allow(unused_mut, unused_assignments)]
                let mut calamine = None;
                $(calamine = Some($calamine);)?
                check_crasher($file, $expected, calamine);
            }
        )*
    };
}

crashers! {
    // .xls: our own reader first, then calamine's (contained). Broken compound files are
    // one line from either; calamine panics on some, which its child turns into one line
    xls_truncated_cfb_m00730: "m00730.xls" => Expected::Fatal("not a readable workbook (corrupt or truncated?)"),
        calamine Expected::Fatal("calamine failed on it (corrupt or truncated?)");
    xls_truncated_cfb_m02726: "m02726.xls" => Expected::Fatal("not a readable workbook (corrupt or truncated?)"),
        calamine Expected::Fatal("calamine failed on it (corrupt or truncated?)");
    xls_truncated_assertion_m00789: "m00789.xls" => Expected::Fatal("not a readable workbook"),
        calamine Expected::Fatal("calamine failed on it");
    // formulas are never parsed by our reader (only their cached results are read)
    xls_formula_out_of_range_m02524: "m02524.xls" => Expected::Import,
        calamine Expected::Fatal("calamine failed on it");
    xls_formula_out_of_range_m02717: "m02717.xls" => Expected::Import,
        calamine Expected::Fatal("calamine failed on it");
    // allocations a small .xls claims: nothing our reader allocates is sized by the file;
    // calamine's contained reader is stopped, one line says why
    xls_claimed_allocation_m02751: "m02751.xls" => Expected::Fatal("not a readable workbook"),
        calamine Expected::Fatal("needs more memory than it can honestly hold");
    xls_far_corner_cell_m03233: "m03233.xls" => Expected::Import,
        calamine Expected::Fatal("needs more memory than it can honestly hold");
    xls_far_cell_m03237: "m03237.xls" => Expected::Import,
        calamine Expected::Fatal("needs more memory than it can honestly hold");
    xls_huge_dimensions_m03238: "m03238.xls" => Expected::Import,
        calamine Expected::Fatal("needs more memory than it can honestly hold");
    xls_huge_dimensions_m03255: "m03255.xls" => Expected::Import,
        calamine Expected::Fatal("needs more memory than it can honestly hold");
    xls_huge_dimensions_m03256: "m03256.xls" => Expected::Import,
        calamine Expected::Fatal("needs more memory than it can honestly hold");
    // a cell far down a small sheet: streamed in 25 MB by ours, a 1 GB grid in calamine's
    xls_dense_range_m03236: "m03236.xls" => Expected::Import, calamine Expected::FatalOrImport;
    xls_byte_flips_m00577: "m00577.xls" => Expected::Import, calamine Expected::FatalOrImport;
    // .xlsx: shared strings and whitespace that claim or expand to gigabytes
    xlsx_nul_in_member_name_m02953: "m02953.xlsx" => Expected::Fatal("cannot open");
    xlsx_512_mb_string_m03082: "m03082.xlsx" => Expected::FatalOrImport;
    xlsx_1_gb_string_m03083: "m03083.xlsx" => Expected::FatalOrImport;
    xlsx_2_gb_string_m03084: "m03084.xlsx" => Expected::FatalOrImport;
    xlsx_67_million_strings_m03087: "m03087.xlsx" => Expected::FatalOrImport;
    xlsx_claimed_unique_count_m03088: "m03088.xlsx" => Expected::FatalOrImport;
    xlsx_one_string_in_16384_cells_m03090: "m03090.xlsx" => Expected::FatalOrImport;
    xlsx_1_gb_whitespace_m03094: "m03094.xlsx" => Expected::FatalOrImport;
    xlsx_10_mb_header_cell_m03164: "m03164.xlsx" => Expected::FatalOrImport;
    // .ods: our own reader
    ods_row_repeated_4294967295_times_m03192: "m03192.ods" => Expected::Fatal("past the last row a sheet may have");
    ods_64_kb_string_over_16384_columns_m03198: "m03198.ods" => Expected::Fatal("holds more than 16 MiB of text");
    ods_space_runs_m03201: "m03201.ods" => Expected::Fatal("longer than the 1 MiB a workbook cell may hold");
    ods_1_gb_whitespace_m03229: "m03229.ods" => Expected::Import;
    ods_1_5_gb_cell_m03230: "m03230.ods" => Expected::Fatal("more than 8 MiB of markup or text without a break");
    ods_1_5_gb_attribute_m03231: "m03231.ods" => Expected::Fatal("more than 8 MiB of markup or text without a break");
    // made by tests/fixtures/make_crashers.py: a date serial of -1.2e308 (one flipped
    // byte), and -1e300 and NaN in .xlsx date cells: no date, never a panic (the table is
    // inferred here, so the cells go to text; a_date_serial_out_of_range_is_a_rejected_cell
    // loads them into timestamp columns)
    xls_date_serial_flipped: "date_serial_flipped.xls" => Expected::Import, calamine Expected::Import;
    xlsx_date_serial_huge: "date_serial_huge.xlsx" => Expected::Import;
    // a cell of 3,000 characters of markup: the error quotes 100 of them
    xlsm_repeated_v_in_a_cell: "repeated_v.xlsm" => Expected::Fatal("numeric cell holds \"<v><v>");
    // what repeats and references expand to is bounded per sheet, and refused at once
    ods_1_mb_cells_repeated_over_100000_rows: "rows_of_1_mb_cells_repeated.ods" => Expected::Fatal("takes the sheet past 4 GiB of text");
    // 3 GB of text, under that bound: read with rows of 2 MB a few at a time, not in
    // batches of 1,000 (2 GB)
    ods_1_mb_cells_repeated_over_1500_rows: "rows_of_1_mb_cells_repeated_1500_times.ods" => Expected::Import;
    ods_a_value_repeated_over_every_row_and_column: "values_repeated_over_every_row_and_column.ods" => Expected::Fatal("takes the sheet's repeated cells past 67108864");
    xlsx_one_string_in_16_cells_of_1000_rows: "one_string_in_16_cells_of_1000_rows.xlsx" => Expected::Fatal("the sheet holds more than 4 GiB of text by row");
}

#[test]
fn a_value_in_an_error_line_is_quoted_to_a_hundred_characters() {
    let db = TestDb::new();
    let path = fixture("crashers/repeated_v.xlsm");
    let run = db.importer(&[
        "run",
        "--dry-run",
        "-t",
        "fz",
        path.to_str().expect("UTF-8 path"),
    ]);
    let line = fatal_error_line(&run);
    let quoted = format!("\"{}<… (3000 characters)\"", "<v>".repeat(33));
    assert!(line.ends_with(&quoted), "{line}");
    assert!(line.chars().count() < 300, "{line}");
}

#[test]
fn a_date_serial_out_of_range_is_a_rejected_cell() {
    // (file, reader arguments, the rejected row and its reason)
    let cases: [(&str, &[&str], u32, &str); 4] = [
        (
            "date_serial_flipped.xls",
            &[],
            2,
            "not a timestamp: -1244021788203405",
        ),
        (
            "date_serial_flipped.xls",
            &["--xls-reader", "calamine"],
            2,
            "not a timestamp: -1244021788203405",
        ),
        (
            "date_serial_huge.xlsx",
            &[],
            2,
            "not a timestamp: -1000000000000000",
        ),
        (
            "date_serial_huge.xlsx",
            &["--xlsx-reader", "calamine"],
            2,
            "not a timestamp: -1000000000000000",
        ),
    ];
    for (name, reader, rejected_row, reason) in cases {
        let db = TestDb::new();
        db.execute(
            "CREATE TABLE fz (id bigint, name text, qty text, price double precision, \
             phone bigint, active boolean, day date, moment timestamp, note text)",
        );
        let dir = TempDir::new();
        let rejects = dir.path("rejects.csv");
        let path = fixture(&format!("crashers/{name}"));
        let mut args = vec!["run", "--format", "json", "-t", "fz", "--rejects"];
        args.push(rejects.to_str().expect("UTF-8 path"));
        args.extend(reader);
        args.push(path.to_str().expect("UTF-8 path"));
        let run = db.importer(&args);
        let label = format!("{name} {reader:?}");
        assert_eq!(run.code, 3, "{label}: some rows are rejected\n{run:?}");
        assert!(!run.stderr.contains("panicked"), "{label}: {run:?}");
        let stats = run.json();
        assert_eq!(stats["total_records"], 4, "{label}");
        let written = stats["success_count"].as_u64().expect("a count");
        assert_eq!(db.count("fz") as u64, written, "{label}");
        let rejects = std::fs::read_to_string(&rejects).expect("the rejects file is written");
        let line = rejects
            .lines()
            .find(|line| line.starts_with(&format!("{rejected_row},moment,")))
            .unwrap_or_else(|| panic!("{label}: row {rejected_row} is not rejected\n{rejects}"));
        assert!(line.contains(reason), "{label}: {line}");
    }
    // NaN in a date cell (row 3 of the .xlsx, column day) is no date either
    let db = TestDb::new();
    db.execute("CREATE TABLE fz (id bigint, name text, qty text, price double precision, phone bigint, active boolean, day date, moment text, note text)");
    let path = fixture("crashers/date_serial_huge.xlsx");
    let run = db.importer(&[
        "run",
        "--format",
        "json",
        "-t",
        "fz",
        path.to_str().expect("UTF-8 path"),
    ]);
    assert_eq!(run.code, 3, "{run:?}");
    assert_eq!(run.json()["error_count"], 1, "{run:?}");
    assert_eq!(
        db.scalar("SELECT moment FROM fz WHERE id = 1").as_deref(),
        Some(format!("-1{}", "0".repeat(300)).as_str()),
        "a serial out of range goes into text as the number it is"
    );
}

#[test]
fn the_nul_in_a_zip_member_name_is_shown_escaped() {
    let db = TestDb::new();
    let path = fixture("crashers/m02953.xlsx");
    let run = db.importer(&[
        "run",
        "--dry-run",
        "-t",
        "fz",
        path.to_str().expect("UTF-8 path"),
    ]);
    let line = fatal_error_line(&run);
    assert!(line.contains(r"workbook.xm\0l.rels"), "{line}");
}

#[test]
fn a_10_mb_header_cell_is_refused_before_the_table_is_created() {
    let db = TestDb::new();
    let path = fixture("crashers/m03164.xlsx");
    let run = db.importer(&["run", "-t", "fz", path.to_str().expect("UTF-8 path")]);
    let line = fatal_error_line(&run);
    check_line("m03164 real load", &line);
    assert!(line.contains("cell A1"), "{line}");
    assert_eq!(
        db.scalar("SELECT count(*)::text FROM pg_tables WHERE tablename = 'fz'")
            .as_deref(),
        Some("0"),
        "no table is created for a refused header"
    );
}

/// Copies `source` to a file named `name` in `dir`.
fn copy_as(dir: &TempDir, source: &Path, name: &str) -> PathBuf {
    let path = dir.path(name);
    std::fs::copy(source, &path).expect("the fixture is copied");
    path
}

#[test]
fn file_names_with_newlines_and_escapes_stay_on_one_escaped_line() {
    let db = TestDb::new();
    let dir = TempDir::new();
    let cases = [
        // a broken compound file, read by our .xls reader
        (fixture("crashers/m00730.xls"), "evil\nname\u{1b}[31m.xls"),
        // our own .ods reader
        (fixture("crashers/m03192.ods"), "evil\nname\u{1b}[31m.ods"),
        // a file that is not there at all
        (dir.path("missing"), "missing\r\nfile\u{7}.xlsx"),
    ];
    for (source, name) in cases {
        let path = if source.exists() {
            copy_as(&dir, &source, name)
        } else {
            dir.path(name)
        };
        let measured = run_measured(
            &[
                "run".as_ref(),
                "--dry-run".as_ref(),
                "-t".as_ref(),
                "fz".as_ref(),
                path.as_os_str(),
            ],
            &db.url,
        );
        let line = fatal_error_line(&measured.run);
        check_line(name, &line);
        let escaped = importer::message::shown(name);
        assert!(line.contains(&escaped), "{line:?} lacks {escaped:?}");
    }
}

#[test]
fn a_sheet_name_is_quoted_escaped_and_cut() {
    let db = TestDb::new();
    let path = fixture("dataset_libreoffice.xls");
    let long = format!("bad\nsheet{}", "x".repeat(5_000));
    let run = db.importer(&[
        "run",
        "--dry-run",
        "--sheet",
        &long,
        path.to_str().expect("UTF-8 path"),
    ]);
    let line = fatal_error_line(&run);
    check_line("long sheet name", &line);
    assert!(line.contains(r#"sheet "bad\nsheetxxx"#), "{line}");
    assert!(line.contains("(5009 characters)"), "{line}");
}
