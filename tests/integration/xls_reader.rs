//! The .xls reader of our own against its oracle, calamine: every .xls fixture, the real
//! files of other projects' test folders (tests/fixtures/real_xls/), and workbooks built
//! here record by record (shared strings split across CONTINUE records, cells out of row
//! order, every cell record kind) must read to identical rows with both readers, but for
//! the known differences listed here with their reason (where calamine is wrong, checked
//! against xlrd); an encrypted workbook gets one clear error, and a file older than BIFF8
//! is read by calamine whichever reader is asked for. The crashers are in hostile_inputs.rs.

use std::io::Write;
use std::path::{Path, PathBuf};

use calamine::{CellErrorType, Data};

use crate::util::{
    Side, TempDir, TestDb, fatal_error_line, fixture, read_sheet, reader_differences,
};

#[test]
fn every_xls_fixture_reads_the_same_with_both_readers() {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(fixture(""))
        .expect("fixture directory is readable")
        .map(|entry| entry.expect("fixture entry").path())
        .filter(|path| path.extension().is_some_and(|extension| extension == "xls"))
        .collect();
    paths.sort();
    assert!(paths.len() >= 7, "fixtures are found: {paths:?}");
    let found: Vec<String> = paths
        .iter()
        .flat_map(|path| reader_differences(path, true))
        .collect();
    assert!(found.is_empty(), "{}", found.join("\n"));
}

/// Why calamine reads some real files otherwise than we do: it decodes a BIFF8 string's
/// characters through the workbook's CODEPAGE record, so in a file that declares a code
/// page other than 1200 (UTF-16) each compressed character comes out followed by a NUL
/// ("H\0i\0"). In BIFF8 the code page applies to no string: a compressed character is
/// the low byte of its UTF-16 unit (MS-XLS 2.5.294, XLUnicodeString). xlrd 2.0.2 reads
/// these cells as we do; a real load of calamine's text is refused by PostgreSQL (no NUL
/// in text), which is why the two readers' rejected-row counts differed.
const CALAMINE_CODEPAGE_NULS: &str = "calamine decodes BIFF8 strings through CODEPAGE 1252";

/// The real files calamine reads wrongly, and why; every other real file must read the
/// same with both readers.
const KNOWN_DIFFERENCES: [(&str, &str); 4] = [
    ("CRLFR9.XLS", CALAMINE_CODEPAGE_NULS),
    (
        "Test_git_issue_111_NoRowRecords.xls",
        CALAMINE_CODEPAGE_NULS,
    ),
    ("ex41187-19267.xls", CALAMINE_CODEPAGE_NULS),
    ("sheet_name_parsing.xls", CALAMINE_CODEPAGE_NULS),
];

/// The real .xls files of tests/fixtures/real_xls/.
fn real_xls_files() -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(fixture("real_xls"))
        .expect("tests/fixtures/real_xls is readable")
        .map(|entry| entry.expect("fixture entry").path())
        .filter(|path| {
            path.extension()
                .is_some_and(|extension| extension.eq_ignore_ascii_case("xls"))
        })
        .collect();
    paths.sort();
    assert_eq!(paths.len(), 8, "the real files are found: {paths:?}");
    paths
}

/// What calamine makes of the text of `rows` in a BIFF8 file whose CODEPAGE is 1252: each
/// character followed by a NUL (exact for the characters that windows-1252 and Latin-1
/// share, which is all these files hold).
fn with_codepage_nuls(rows: &[importer::source::SheetRow]) -> Vec<importer::source::SheetRow> {
    let nuls = |text: &str| -> String {
        assert!(
            text.chars()
                .all(|character| matches!(u32::from(character), 0..=0x7F | 0xA0..=0xFF)),
            "{text:?} holds characters whose windows-1252 reading differs from Latin-1"
        );
        text.chars()
            .flat_map(|character| [character, '\0'])
            .collect()
    };
    rows.iter()
        .map(|row| {
            let mut row = row.clone();
            for cell in &mut row.cells {
                if let Data::String(text) = cell {
                    *text = nuls(text);
                }
            }
            row
        })
        .collect()
}

#[test]
fn every_real_xls_reads_as_calamine_reads_it_but_for_the_known_differences() {
    let mut found = Vec::new();
    for path in real_xls_files() {
        let name = path.file_name().expect("a file name").to_string_lossy();
        let Some((_, reason)) = KNOWN_DIFFERENCES.iter().find(|(known, _)| *known == name) else {
            found.extend(reader_differences(&path, true));
            continue;
        };
        use calamine::Reader;
        let sheets = calamine::open_workbook_auto(&path)
            .expect("calamine opens it")
            .sheet_names();
        for sheet in sheets {
            let ours = read_sheet(&path, &sheet, Side::Ours).expect("our reader reads it");
            let oracle = read_sheet(&path, &sheet, Side::Oracle).expect("calamine reads it");
            // the difference is still there (else this file belongs with the others) and
            // it is exactly the one named
            assert_ne!(
                ours, oracle,
                "{name} {sheet:?}: no longer differs ({reason})"
            );
            assert_eq!(
                with_codepage_nuls(&ours),
                oracle,
                "{name} {sheet:?}: differs otherwise than by {reason}"
            );
        }
    }
    assert!(found.is_empty(), "{}", found.join("\n"));
}

#[test]
fn real_xls_cells_read_as_xlrd_reads_them() {
    let text = |value: &str| Data::String(value.to_string());
    let read = |name: &str, sheet: &str| {
        read_sheet(&fixture(&format!("real_xls/{name}")), sheet, Side::Ours)
            .unwrap_or_else(|error| panic!("{name} {sheet:?}: {error}"))
    };
    // (file, sheet, 1-based row, 0-based column, the cell as xlrd 2.0.2 reads it)
    let cases = [
        // CODEPAGE 1252 in BIFF8: compressed characters are Latin-1, no NULs
        ("CRLFR9.XLS", "A", 1, 1, text("abc\r\ndef")),
        ("CRLFR9.XLS", "A", 2, 0, text("Formula")),
        ("ex41187-19267.xls", "Sheet1", 2, 0, text("Hi Excel!")),
        ("ex41187-19267.xls", "Sheet1", 3, 0, Data::Float(1.2345)),
        ("sheet_name_parsing.xls", "Sheet1", 1, 2, text("År")),
        ("sheet_name_parsing.xls", "Sheet1", 1, 3, text("Regissör")),
        (
            "Test_git_issue_111_NoRowRecords.xls",
            "Sheet1",
            2,
            13,
            text("YTD"),
        ),
        (
            "Test_git_issue_111_NoRowRecords.xls",
            "Sheet1",
            4,
            13,
            text("-8.63%"),
        ),
        // a LABEL of no characters without its flags byte, then ordinary cells
        ("Test_git_issue_392_oob.xls", "Sheet1", 1, 2, text("AAA")),
        ("Test_git_issue_392_oob.xls", "Sheet1", 3, 9, text("10x20")),
        // a FORMAT code that claims one character more than its record holds
        (
            "61045_govdocs1_626534.xls",
            "Sheet1",
            8,
            6,
            text("     TOTAL"),
        ),
        // both sheets of a compound file whose byte-order mark is byte-swapped
        (
            "pr.4687.excel.badendian.xls",
            "Sheet1",
            2,
            3,
            Data::Float(8.0),
        ),
        ("pr.4687.excel.badendian.xls", "Sheet2", 4, 1, text("h")),
    ];
    for (name, sheet, row_number, column, expected) in cases {
        let rows = read(name, sheet);
        let row = rows
            .iter()
            .find(|row| row.row_number == row_number)
            .unwrap_or_else(|| panic!("{name} {sheet:?}: no row {row_number}"));
        assert_eq!(
            row.cells.get(column),
            Some(&expected),
            "{name} {sheet:?} row {row_number}"
        );
    }
    // an SST whose CONTINUE holds only the flag byte of the characters that follow in
    // the next one: every string after it is read, down to the last cell
    let rows = read(
        "Test_git_issue_467_sst_empty_continue.xls",
        "Weekly Prices with taxes",
    );
    let last = rows.last().expect("rows are read");
    assert_eq!(last.row_number, 97);
    assert!(
        matches!(&last.cells[0], Data::String(text) if text.starts_with("The prices communicated by the Member States")),
        "{last:?}"
    );
}

/// One BIFF record.
fn record(kind: u16, body: &[u8]) -> Vec<u8> {
    let mut bytes = kind.to_le_bytes().to_vec();
    bytes.extend((body.len() as u16).to_le_bytes());
    bytes.extend(body);
    bytes
}

/// A BOF record of BIFF `version` for substream `substream` (0x0005 globals, 0x0010 sheet).
fn bof(version: u16, substream: u16) -> Vec<u8> {
    let mut body = version.to_le_bytes().to_vec();
    body.extend(substream.to_le_bytes());
    body.extend([0; 12]);
    record(0x0809, &body)
}

/// A cell record's first six bytes: row, column, XF index.
fn cell_head(row: u16, column: u16, xf: u16) -> Vec<u8> {
    [row.to_le_bytes(), column.to_le_bytes(), xf.to_le_bytes()].concat()
}

/// An `XLUnicodeString` of `text`, compressed when it is Latin-1.
fn unicode_string(text: &str) -> Vec<u8> {
    let units: Vec<u16> = text.encode_utf16().collect();
    let mut bytes = (units.len() as u16).to_le_bytes().to_vec();
    if units.iter().all(|unit| *unit < 0x100) {
        bytes.push(0);
        bytes.extend(units.iter().map(|unit| *unit as u8));
    } else {
        bytes.push(1);
        bytes.extend(units.iter().flat_map(|unit| unit.to_le_bytes()));
    }
    bytes
}

/// A BIFF8 workbook stream: globals with `globals_extra` records, one sheet "Data" whose
/// records are `sheet_records`.
fn biff8_stream(globals_extra: &[Vec<u8>], sheet_records: &[Vec<u8>]) -> Vec<u8> {
    let mut globals = bof(0x0600, 0x0005);
    globals.extend(record(0x0042, &1200u16.to_le_bytes()));
    // a custom date format, and XFs: 0 general, 1 built-in date (14), 2 the custom one
    let mut format = 164u16.to_le_bytes().to_vec();
    format.extend(unicode_string("yyyy\\-mm\\-dd"));
    globals.extend(record(0x041E, &format));
    for format_id in [0u16, 14, 164] {
        let mut xf = vec![0, 0];
        xf.extend(format_id.to_le_bytes());
        xf.extend([0; 16]);
        globals.extend(record(0x00E0, &xf));
    }
    for extra in globals_extra {
        globals.extend(extra);
    }
    let boundsheet_at = globals.len();
    let mut boundsheet = vec![0; 4];
    boundsheet.extend([0, 0, 4, 0]);
    boundsheet.extend(b"Data");
    globals.extend(record(0x0085, &boundsheet));
    globals.extend(record(0x000A, &[]));
    let sheet_offset = globals.len() as u32;
    globals[boundsheet_at + 4..boundsheet_at + 8].copy_from_slice(&sheet_offset.to_le_bytes());
    let mut stream = globals;
    stream.extend(bof(0x0600, 0x0010));
    for sheet_record in sheet_records {
        stream.extend(sheet_record);
    }
    stream.extend(record(0x000A, &[]));
    stream
}

/// `stream` as the Workbook stream of a compound file at `path`.
fn write_xls(path: &Path, stream: &[u8]) {
    let mut container = cfb::create(path).expect("the compound file is created");
    let mut workbook = container
        .create_stream("/Workbook")
        .expect("the stream is created");
    workbook.write_all(stream).expect("the stream is written");
    drop(workbook);
    container.flush().expect("the compound file is written");
}

/// An SST of the strings "name", "Zoë Ünal", and "abc" + "def" + "ghi" whose characters
/// go on in two CONTINUE records, the first switching to UTF-16 at its flag byte, and
/// a fourth string with rich-text runs and phonetic data that starts a CONTINUE.
fn split_shared_strings() -> Vec<Vec<u8>> {
    let mut first = vec![4, 0, 0, 0, 4, 0, 0, 0];
    first.extend(unicode_string("name"));
    first.extend(unicode_string("Zoë Ünal"));
    // 9 characters, compressed, only 3 in this record
    first.extend([9, 0, 0]);
    first.extend(b"abc");
    // flag 1: the next 3 characters are UTF-16
    let mut second = vec![1];
    second.extend("déf".encode_utf16().flat_map(|unit| unit.to_le_bytes()));
    // flag 0: the last 3 compressed
    let mut third = vec![0];
    third.extend(b"ghi");
    // a rich string (one run) with 2 bytes of phonetic data
    third.extend([2, 0, 0x0C, 1, 0, 2, 0, 0, 0]);
    third.extend(b"ok");
    third.extend([0, 0, 1, 0]);
    third.extend([7, 7]);
    vec![
        record(0x00FC, &first),
        record(0x003C, &second),
        record(0x003C, &third),
    ]
}

fn label_sst(row: u16, column: u16, index: u32) -> Vec<u8> {
    let mut body = cell_head(row, column, 0);
    body.extend(index.to_le_bytes());
    record(0x00FD, &body)
}

fn number(row: u16, column: u16, xf: u16, value: f64) -> Vec<u8> {
    let mut body = cell_head(row, column, xf);
    body.extend(value.to_le_bytes());
    record(0x0203, &body)
}

fn formula(row: u16, column: u16, result: [u8; 8]) -> Vec<u8> {
    let mut body = cell_head(row, column, 0);
    body.extend(result);
    // flags, chn, and an empty parsed expression
    body.extend([0; 6]);
    body.extend([0, 0]);
    record(0x0006, &body)
}

/// Every cell record kind, the rows written in order or not.
fn every_cell_kind(in_order: bool) -> Vec<Vec<u8>> {
    let mut mulrk = cell_head(3, 0, 0)[..4].to_vec();
    for (xf, rk) in [
        (0u16, (7u32 << 2) | 2),
        (0, (1234 << 2) | 3),
        (1, (45000 << 2) | 2),
    ] {
        mulrk.extend(xf.to_le_bytes());
        mulrk.extend(rk.to_le_bytes());
    }
    mulrk.extend(2u16.to_le_bytes());
    let mut rk = cell_head(1, 1, 0);
    rk.extend(0x3FF0_0000u32.to_le_bytes());
    let mut label = cell_head(4, 0, 0);
    label.extend(unicode_string("Ελληνικά"));
    let mut boolean = cell_head(1, 2, 0);
    boolean.extend([1, 0]);
    let mut error = cell_head(1, 3, 0);
    error.extend([0x07, 1]);
    let string = unicode_string("from a formula");
    let header = [label_sst(0, 0, 0), label_sst(0, 1, 1)];
    let row_2 = [label_sst(2, 0, 2), label_sst(2, 1, 3)];
    let row_1 = [
        record(0x027E, &rk),
        record(0x0205, &boolean),
        record(0x0205, &error),
    ];
    let mut records: Vec<Vec<u8>> = if in_order {
        [&header[..], &row_1, &row_2].concat()
    } else {
        // row 2 before row 1, the header last
        [&row_2[..], &row_1].concat()
    };
    records.extend([
        record(0x00BD, &mulrk),
        record(0x0204, &label),
        number(4, 1, 2, 45292.0),
        number(4, 2, 0, -0.5),
        formula(5, 0, [0, 0, 0, 0, 0, 0, 0xFF, 0xFF]),
        // an array formula's record may come between a FORMULA and its STRING
        record(0x0221, &[0; 14]),
        record(0x0207, &string),
        formula(5, 1, [1, 0, 1, 0, 0, 0, 0xFF, 0xFF]),
        formula(5, 2, [2, 0, 0x2A, 0, 0, 0, 0xFF, 0xFF]),
        formula(5, 3, 2.5f64.to_le_bytes()),
        formula(5, 4, [3, 0, 0, 0, 0, 0, 0xFF, 0xFF]),
        // a blank cell and an embedded chart substream, both without cells to read
        record(0x0201, &cell_head(6, 0, 0)),
        bof(0x0600, 0x0020),
        number(0, 9, 0, 99.0),
        record(0x000A, &[]),
    ]);
    if !in_order {
        records.extend(header);
    }
    records
}

#[test]
fn a_handmade_biff8_workbook_reads_the_same_with_both_readers() {
    let dir = TempDir::new();
    for (label, in_order) in [("unordered", false), ("ordered", true)] {
        let path = dir.path(&format!("{label}.xls"));
        let cells = every_cell_kind(in_order);
        write_xls(&path, &biff8_stream(&split_shared_strings(), &cells));
        let found = reader_differences(&path, true);
        assert!(found.is_empty(), "{label}: {}", found.join("\n"));
        let rows = read_sheet(&path, "Data", Side::Ours).expect("the workbook reads");
        let text = |value: &str| Data::String(value.to_string());
        assert_eq!(
            rows.iter().map(|row| row.row_number).collect::<Vec<_>>(),
            [1, 2, 3, 4, 5, 6],
            "{label}"
        );
        assert_eq!(rows[0].cells, [text("name"), text("Zoë Ünal")], "{label}");
        assert_eq!(
            rows[1].cells,
            [
                Data::Empty,
                Data::Float(1.0),
                Data::Bool(true),
                Data::Error(CellErrorType::Div0)
            ],
            "{label}"
        );
        assert_eq!(rows[2].cells, [text("abcdéfghi"), text("ok")], "{label}");
        assert_eq!(
            rows[3].cells[..2],
            [Data::Int(7), Data::Float(12.34)],
            "{label}"
        );
        assert!(matches!(rows[3].cells[2], Data::DateTime(_)), "{label}");
        assert_eq!(rows[4].cells[0], text("Ελληνικά"), "{label}");
        assert!(matches!(rows[4].cells[1], Data::DateTime(_)), "{label}");
        assert_eq!(
            rows[5].cells,
            [
                text("from a formula"),
                Data::Bool(true),
                Data::Error(CellErrorType::NA),
                Data::Float(2.5)
            ],
            "{label}"
        );
    }
}

#[test]
fn a_shared_string_index_past_the_table_is_an_error_naming_the_cell() {
    let dir = TempDir::new();
    let path = dir.path("past.xls");
    write_xls(
        &path,
        &biff8_stream(
            &split_shared_strings(),
            &[label_sst(0, 0, 0), label_sst(1, 2, 40)],
        ),
    );
    let error = read_sheet(&path, "Data", Side::Ours).expect_err("the index is refused");
    assert!(error.contains("cell C2"), "{error}");
    assert!(
        error.contains("past the end of the table (4 entries)"),
        "{error}"
    );
}

#[test]
fn an_encrypted_xls_is_one_clear_error() {
    let db = TestDb::new();
    let dir = TempDir::new();
    let path = dir.path("secret.xls");
    // RC4 encryption: wEncryptionType 1, then its header (not needed to refuse it)
    let filepass = record(0x002F, &[1, 0, 1, 0, 1, 0]);
    write_xls(&path, &biff8_stream(&[filepass], &[label_sst(0, 0, 0)]));
    let run = db.importer(&[
        "run",
        "--dry-run",
        "-t",
        "fz",
        path.to_str().expect("UTF-8"),
    ]);
    let line = fatal_error_line(&run);
    assert!(line.contains("is encrypted (password protected)"), "{line}");
    assert!(!line.contains('\n'), "{line}");
}

#[test]
fn an_xls_older_than_biff8_is_read_by_calamine_with_either_reader() {
    let dir = TempDir::new();
    let path = dir.path("excel95.xls");
    // BIFF5: 8-bit strings in the code page, no SST
    let mut stream = bof(0x0500, 0x0005);
    stream.extend(record(0x0042, &1252u16.to_le_bytes()));
    let boundsheet_at = stream.len();
    let mut boundsheet = vec![0; 4];
    boundsheet.extend([0, 0, 4]);
    boundsheet.extend(b"Data");
    stream.extend(record(0x0085, &boundsheet));
    stream.extend(record(0x000A, &[]));
    let sheet_offset = stream.len() as u32;
    stream[boundsheet_at + 4..boundsheet_at + 8].copy_from_slice(&sheet_offset.to_le_bytes());
    stream.extend(bof(0x0500, 0x0010));
    let mut label = cell_head(0, 0, 0);
    label.extend(5u16.to_le_bytes());
    label.extend(b"caf\xE9s");
    stream.extend(record(0x0204, &label));
    stream.extend(number(1, 0, 0, 3.0));
    stream.extend(record(0x000A, &[]));
    let mut container = cfb::create(&path).expect("the compound file is created");
    let mut book = container
        .create_stream("/Book")
        .expect("the stream is created");
    book.write_all(&stream).expect("the stream is written");
    drop(book);
    container.flush().expect("the compound file is written");
    let fast = read_sheet(&path, "Data", Side::Ours);
    let oracle = read_sheet(&path, "Data", Side::Oracle);
    assert_eq!(fast, oracle);
    let rows = fast.expect("calamine reads BIFF5");
    assert_eq!(rows[0].cells, [Data::String("cafés".to_string())]);
}

#[test]
fn the_calamine_reader_is_kept_behind_xls_reader_calamine() {
    let db = TestDb::new();
    let path = fixture("dataset_libreoffice.xls");
    let mut outputs = Vec::new();
    for reader in ["fast", "calamine"] {
        let run = db.importer(&[
            "run",
            "--dry-run",
            "--format",
            "json",
            "-t",
            "dataset",
            "--xls-reader",
            reader,
            path.to_str().expect("UTF-8"),
        ]);
        assert!(matches!(run.code, 0 | 3), "{reader}: {run:?}");
        let stats: serde_json::Value =
            serde_json::from_str(&run.stdout).expect("the stats are JSON");
        outputs.push((
            stats["total_records"].clone(),
            stats["success_count"].clone(),
        ));
    }
    assert_eq!(outputs[0], outputs[1]);
}
