//! Seeded mutations of the committed .ods and CSV fixtures, read in-process: whatever the
//! mutation, reading gives rows or one short error line, never a panic, and never runs
//! away. A bounded, repeatable slice of what the cargo-fuzz target (fuzz/) explores without
//! end; .xlsx is left to that target and the xlsx reader's own tests, since calamine
//! in-process can abort the whole test binary on an allocation a mutated file claims.
//!
//! A mutation works on the bytes of `content.xml` (the package is zipped again around it),
//! so that it reaches the XML reader instead of stopping at the zip's checksum. For .xls it
//! works on the Workbook stream (a compound file is built again around it) or, now and
//! then, on the file's own bytes, so that both the BIFF records and the container are hit;
//! the .xls is read by our reader alone (a mutation that makes it older than BIFF8 would
//! hand it to calamine, in-process here).

use std::io::{Read, Write};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{SourceSpec, read_rows};

/// Mutated files per fixture.
const MUTATIONS_PER_FIXTURE: u64 = 40;

/// Rows read from one mutated file before the visitor stops (a mutation may legitimately
/// repeat a row a million times; reading all of them proves nothing more).
const MAX_ROWS_READ: usize = 20_000;

/// Longest a single mutated file may take, on a loaded machine, in a debug build.
const MAX_SECONDS_PER_FILE: u64 = 20;

/// Fragments a mutation may insert: the attributes and elements hostile files abuse.
const TOKENS: &[&str] = &[
    r#" table:number-rows-repeated="4294967295""#,
    r#" table:number-rows-repeated="1048576""#,
    r#" table:number-columns-repeated="16384""#,
    r#" table:number-columns-repeated="0""#,
    r#"<text:s text:c="4294967295"/>"#,
    r#"<text:s text:c="65536"/>"#,
    r#" office:value-type="string""#,
    r#" office:value-type="float" office:value="1e400""#,
    r#" calcext:value-type="error""#,
    "<table:table-row>",
    "</table:table-row>",
    "<table:table-cell>",
    "</table:table-cell>",
    "<text:p>",
    "&#0;",
    "&#x1b;",
    "&bogus;",
    "<![CDATA[",
    "\"",
    "\u{0}",
    "\n\u{1b}[31m",
];

struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Self {
        let path = std::env::temp_dir().join(format!(
            "importer-fuzz-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |elapsed| elapsed.as_nanos())
        ));
        std::fs::create_dir_all(&path).expect("temp dir is writable");
        Self(path)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.0).ok();
    }
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// One random change to `bytes`.
fn mutate(bytes: &mut Vec<u8>, rng: &mut ChaCha8Rng) {
    if bytes.is_empty() {
        bytes.extend_from_slice(TOKENS[rng.random_range(0..TOKENS.len())].as_bytes());
        return;
    }
    let at = rng.random_range(0..bytes.len());
    match rng.random_range(0..6) {
        0 => bytes[at] ^= 1 << rng.random_range(0..8),
        1 => {
            let end = (at + rng.random_range(1..64)).min(bytes.len());
            bytes.drain(at..end);
        }
        2 => {
            let end = (at + rng.random_range(1..256)).min(bytes.len());
            let copy = bytes[at..end].to_vec();
            let times = rng.random_range(1..8);
            for _ in 0..times {
                bytes.splice(at..at, copy.iter().copied());
            }
        }
        3 => bytes.truncate(at),
        _ => {
            let token = TOKENS[rng.random_range(0..TOKENS.len())];
            bytes.splice(at..at, token.bytes());
        }
    }
}

/// Reads `path` with a bounded visitor and checks the outcome.
fn check_read(path: &Path, label: &str) {
    let spec = SourceSpec {
        xlsx_reader: crate::source::XlsxReader::Fast,
        xls_reader: crate::source::XlsReader::Fast,
        path: path.to_path_buf(),
        sheet: None,
        header_row: 1,
        csv: Default::default(),
    };
    let started = Instant::now();
    let outcome = std::panic::catch_unwind(|| {
        let mut row_count = 0_usize;
        read_rows(&spec, &mut |_row| {
            row_count += 1;
            if row_count >= MAX_ROWS_READ {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .map(|_| ())
    });
    let elapsed = started.elapsed();
    match outcome {
        Ok(Ok(())) => {}
        Ok(Err(error)) => {
            let message = format!("{error:#}");
            assert!(
                !message.chars().any(|character| character.is_control()),
                "{label}: control character in {message:?}"
            );
            assert!(
                message.len() < 4_000,
                "{label}: message of {} bytes",
                message.len()
            );
        }
        Err(_) => panic!("{label}: the reader panicked"),
    }
    assert!(
        elapsed < Duration::from_secs(MAX_SECONDS_PER_FILE),
        "{label}: took {elapsed:?}"
    );
}

#[test]
fn mutated_ods_files_give_rows_or_one_line_errors() {
    let scratch = Scratch::new();
    let fixtures = [
        "dataset_libreoffice.ods",
        "cell_errors_libreoffice.ods",
        "formulas_libreoffice.ods",
        "stray_cell_libreoffice.ods",
    ];
    for (fixture_index, name) in fixtures.iter().enumerate() {
        let file = std::fs::File::open(fixture(name)).expect("the fixture exists");
        let mut archive = zip::ZipArchive::new(file).expect("the fixture is a zip");
        let mut parts: Vec<(String, Vec<u8>)> = Vec::new();
        for index in 0..archive.len() {
            let mut entry = archive.by_index(index).expect("the fixture's entries read");
            let mut bytes = Vec::new();
            entry
                .read_to_end(&mut bytes)
                .expect("the fixture's entries inflate");
            let part_name = entry
                .name()
                .expect("the fixture's names are UTF-8")
                .to_string();
            parts.push((part_name, bytes));
        }
        for mutation in 0..MUTATIONS_PER_FIXTURE {
            let seed = (fixture_index as u64) << 32 | mutation;
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let path = scratch.0.join(format!("mutated-{seed}.ods"));
            let mut zip = zip::ZipWriter::new(std::fs::File::create(&path).expect("writable"));
            for (part_name, bytes) in &parts {
                let mut bytes = bytes.clone();
                if part_name == "content.xml" {
                    for _ in 0..rng.random_range(1..6) {
                        mutate(&mut bytes, &mut rng);
                    }
                }
                zip.start_file(part_name.as_str(), zip::write::SimpleFileOptions::default())
                    .expect("zip entry starts");
                zip.write_all(&bytes).expect("zip entry is written");
            }
            zip.finish().expect("zip is finished");
            check_read(&path, &format!("{name} seed {seed}"));
        }
    }
}

/// Reads the first sheet of `path` with our .xls reader only, a bounded number of rows.
fn read_xls(path: &Path) -> anyhow::Result<()> {
    let mut workbook = match super::xls::XlsWorkbook::open(path)? {
        super::xls::Opened::Biff8(workbook) => workbook,
        // calamine's to read, not ours
        super::xls::Opened::OlderBiff(_) => return Ok(()),
    };
    let Some(first) = workbook.sheet_names().into_iter().next() else {
        return Ok(());
    };
    let mut row_count = 0_usize;
    let mut visit = |_row| {
        row_count += 1;
        if row_count >= MAX_ROWS_READ {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    };
    let mut rows = super::RowAssembler::new(0, &mut visit);
    workbook.read_sheet(&first, &mut |position, cell| {
        rows.push(position, cell);
        rows.flow()
    })?;
    rows.finish()
}

/// One random change to a BIFF stream: a record's type or length set to a value hostile
/// files use, or one of the generic mutations.
fn mutate_biff(bytes: &mut Vec<u8>, rng: &mut ChaCha8Rng) {
    if bytes.len() < 4 || rng.random_range(0..3) == 0 {
        mutate(bytes, rng);
        return;
    }
    // walk to a random record header
    let mut offsets = Vec::new();
    let mut offset = 0;
    while offset + 4 <= bytes.len() {
        offsets.push(offset);
        offset += 4 + usize::from(u16::from_le_bytes([bytes[offset + 2], bytes[offset + 3]]));
    }
    let at = offsets[rng.random_range(0..offsets.len())];
    let values: [u16; 8] = [0, 1, 0xFFFF, 0x8000, 0x003C, 0x00FC, 0x0809, 0x000A];
    let value = values[rng.random_range(0..values.len())];
    let field = if rng.random_bool(0.5) { at } else { at + 2 };
    bytes[field..field + 2].copy_from_slice(&value.to_le_bytes());
    // and now and then a body byte: the counts and indexes right after the header
    if rng.random_bool(0.5) && at + 12 <= bytes.len() {
        let body = at + 4 + rng.random_range(0..8);
        bytes[body] = [0x00, 0xFF, 0x7F, 0x80][rng.random_range(0..4)];
    }
}

#[test]
fn mutated_xls_files_give_rows_or_one_line_errors() {
    let scratch = Scratch::new();
    let fixtures = [
        "dataset_libreoffice.xls",
        "dataset_xlwt.xls",
        "cell_errors_libreoffice.xls",
        "formulas_libreoffice.xls",
        "epoch_1904_xlwt.xls",
    ];
    for (fixture_index, name) in fixtures.iter().enumerate() {
        let original = std::fs::read(fixture(name)).expect("the fixture exists");
        let mut container =
            cfb::CompoundFile::open(std::io::Cursor::new(original.clone())).expect("a CFB");
        let mut stream = Vec::new();
        container
            .open_stream("/Workbook")
            .expect("the fixture has a Workbook stream")
            .read_to_end(&mut stream)
            .expect("the stream reads");
        for mutation in 0..MUTATIONS_PER_FIXTURE * 2 {
            let seed = (fixture_index as u64) << 32 | mutation;
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let path = scratch.0.join(format!("mutated-{seed}.xls"));
            if mutation % 8 == 7 {
                // the container itself
                let mut bytes = original.clone();
                for _ in 0..rng.random_range(1..6) {
                    mutate(&mut bytes, &mut rng);
                }
                std::fs::write(&path, &bytes).expect("writable");
            } else {
                let mut bytes = stream.clone();
                for _ in 0..rng.random_range(1..4) {
                    mutate_biff(&mut bytes, &mut rng);
                }
                let mut rebuilt = cfb::create(&path).expect("writable");
                let mut workbook = rebuilt.create_stream("/Workbook").expect("a stream");
                workbook.write_all(&bytes).expect("the stream is written");
                drop(workbook);
                rebuilt.flush().expect("the container is written");
            }
            let label = format!("{name} seed {seed}");
            let started = Instant::now();
            let outcome = std::panic::catch_unwind(|| read_xls(&path));
            match outcome {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    let message = format!("{error:#}");
                    assert!(
                        !message.chars().any(|character| character.is_control()),
                        "{label}: control character in {message:?}"
                    );
                    assert!(message.len() < 4_000, "{label}: {message}");
                }
                Err(_) => panic!("{label}: the .xls reader panicked"),
            }
            assert!(
                started.elapsed() < Duration::from_secs(MAX_SECONDS_PER_FILE),
                "{label}: took {:?}",
                started.elapsed()
            );
        }
    }
}

#[test]
fn mutated_csv_files_give_rows_or_one_line_errors() {
    let scratch = Scratch::new();
    let fixtures = ["dataset_libreoffice.csv", "dataset_python_bom.csv"];
    for (fixture_index, name) in fixtures.iter().enumerate() {
        let original = std::fs::read(fixture(name)).expect("the fixture exists");
        for mutation in 0..MUTATIONS_PER_FIXTURE {
            let seed = (fixture_index as u64) << 32 | mutation;
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let mut bytes = original.clone();
            for _ in 0..rng.random_range(1..6) {
                mutate(&mut bytes, &mut rng);
            }
            let path = scratch.0.join(format!("mutated-{seed}.csv"));
            std::fs::write(&path, &bytes).expect("writable");
            check_read(&path, &format!("{name} seed {seed}"));
        }
    }
}
