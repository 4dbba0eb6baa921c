//! The fast .xlsx reader against its oracle, calamine: every .xlsx/.xlsm fixture, a corpus
//! written here (rust_xlsxwriter and hand-made packages), and `importer generate` output
//! must read to identical rows with both readers; the hostile inputs of the crashers
//! directory and mutated workbooks must end in a normal run or one error line, never a
//! panic; and the reader's own messages (uncached formulas, encrypted files) are checked
//! through the real binary against the real server.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rust_xlsxwriter::{ExcelDateTime, Format, Formula, Workbook};

use crate::util::{
    Side, TempDir, TestDb, fatal_error_line, fixture, project_fixture, read_sheet,
    reader_differences,
};

fn workbooks_in(directory: &Path) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(directory)
        .expect("fixture directory is readable")
        .map(|entry| entry.expect("fixture entry").path())
        .filter(|path| {
            matches!(
                path.extension().and_then(|extension| extension.to_str()),
                Some("xlsx" | "xlsm")
            )
        })
        .collect();
    paths.sort();
    paths
}

#[test]
fn every_xlsx_fixture_reads_the_same_with_both_readers() {
    let mut paths = workbooks_in(fixture("").as_path());
    paths.extend(workbooks_in(project_fixture("").as_path()));
    assert!(paths.len() >= 15, "fixtures are found: {paths:?}");
    let found: Vec<String> = paths
        .iter()
        .flat_map(|path| reader_differences(path, false))
        .collect();
    assert!(found.is_empty(), "{}", found.join("\n"));
}

/// A workbook with every kind of cell rust_xlsxwriter writes, in shared-string or (with
/// `constant_memory`) inline-string form.
fn write_corpus_workbook(path: &Path, constant_memory: bool) {
    let mut workbook = Workbook::new();
    let bold = Format::new().set_bold();
    let italic = Format::new().set_italic();
    let mut date_formats: Vec<Format> = [14u8, 15, 16, 17, 18, 19, 20, 21, 22, 45, 46, 47]
        .iter()
        .map(|id| Format::new().set_num_format_index(*id))
        .collect();
    for code in [
        "yyyy-mm-dd hh:mm",
        "[h]:mm:ss",
        "dd/mm/yyyy",
        "0.00%",
        "\"0000\"",
        "0.000",
        "@",
        "[Red]0.00;[Blue]-0.00",
    ] {
        date_formats.push(Format::new().set_num_format(code));
    }
    let sheet = if constant_memory {
        workbook
            .add_worksheet_with_constant_memory()
            .expect("constant memory sheet")
    } else {
        workbook.add_worksheet()
    };
    sheet.set_name("Kinds").expect("sheet name");
    let header = [
        "number", "text", "rich", "flag", "formula", "error", "date", "spaces", "escape",
    ];
    for (column, name) in header.iter().enumerate() {
        sheet.write_string(0, column as u16, *name).expect("write");
    }
    for row in 1..40u32 {
        let value = f64::from(row) * 1.25 - 7.0;
        sheet.write_number(row, 0, value).expect("write");
        sheet
            .write_string(row, 1, format!("text {row} & <more> \"quoted\" ünïcødé ✓"))
            .expect("write");
        sheet
            .write_rich_string(
                row,
                2,
                &[(&bold, "bold "), (&italic, &format!("italic {row}"))],
            )
            .expect("write");
        sheet.write_boolean(row, 3, row % 2 == 0).expect("write");
        sheet
            .write_formula(
                row,
                4,
                Formula::new(format!("=A{}*2", row + 1)).set_result((value * 2.0).to_string()),
            )
            .expect("write");
        let error = [
            "#DIV/0!", "#N/A", "#NAME?", "#NULL!", "#NUM!", "#REF!", "#VALUE!",
        ][row as usize % 7];
        sheet
            .write_formula(row, 5, Formula::new("=1/0").set_result(error))
            .expect("write");
        let format = &date_formats[row as usize % date_formats.len()];
        let moment = ExcelDateTime::from_ymd(
            1900 + (row as u16) * 3,
            1 + (row % 12) as u8,
            1 + (row % 28) as u8,
        )
        .expect("date")
        .and_hms((row % 24) as u16, (row % 60) as u8, f64::from(row % 60))
        .expect("time");
        sheet
            .write_datetime_with_format(row, 6, &moment, format)
            .expect("write");
        sheet
            .write_string(row, 7, "  padded\tand\nbroken  ")
            .expect("write");
        sheet
            .write_string(row, 8, "_x000D_ literal")
            .expect("write");
        // an empty row and empty columns between the cells
        if row % 10 == 0 {
            sheet.write_number(row, 12, f64::from(row)).expect("write");
        }
    }
    // rows 40..45 stay empty, then a far row with a number in a date format
    sheet
        .write_number_with_format(50, 0, 45351.5, &date_formats[0])
        .expect("write");
    sheet.write_string(50, 30, "far right").expect("write");
    let hidden = workbook.add_worksheet();
    hidden.set_name("Hidden").expect("sheet name");
    hidden.write_string(0, 0, "hidden sheet").expect("write");
    hidden.write_number(1, 0, 1.0).expect("write");
    hidden.set_hidden(true);
    workbook.save(path).expect("corpus workbook is written");
}

#[test]
fn rust_xlsxwriter_workbooks_read_the_same_with_both_readers() {
    let dir = TempDir::new();
    let mut found = Vec::new();
    for constant_memory in [false, true] {
        let path = dir.path(&format!("corpus_{constant_memory}.xlsx"));
        write_corpus_workbook(&path, constant_memory);
        found.extend(reader_differences(&path, false));
        let rows = read_sheet(&path, "Kinds", Side::Ours).expect("the corpus reads");
        assert_eq!(rows.len(), 41, "header, 39 rows and the far row");
    }
    assert!(found.is_empty(), "{}", found.join("\n"));
}

/// Writes a package from its parts (name, XML), deflated.
fn write_package(path: &Path, parts: &[(&str, &str)]) {
    let file = std::fs::File::create(path).expect("package is writable");
    let mut zip = zip::ZipWriter::new(file);
    for (name, content) in parts {
        zip.start_file(*name, zip::write::SimpleFileOptions::default())
            .expect("zip member starts");
        zip.write_all(content.as_bytes())
            .expect("zip member is written");
    }
    zip.finish().expect("zip is finished");
}

const MAIN_NAMESPACE: &str = "http://schemas.openxmlformats.org/spreadsheetml/2006/main";
const RELATIONSHIPS: &str = "http://schemas.openxmlformats.org/officeDocument/2006/relationships";

/// A package with one sheet per entry of `sheets` (name, sheetData XML), the shared
/// strings `sst`, the styles' `cellXfs` number format ids, and the 1904 flag; element
/// names are written with the prefix `prefix` when it is not empty.
fn hand_made_package(
    path: &Path,
    sheets: &[(&str, &str)],
    sst: &str,
    styles: &str,
    date1904: bool,
    namespaces: (&str, &str),
) {
    let (main, relationships) = namespaces;
    let mut workbook_sheets = String::new();
    let mut workbook_rels = String::new();
    let mut parts: Vec<(String, String)> = Vec::new();
    for (index, (name, data)) in sheets.iter().enumerate() {
        let number = index + 1;
        let state = if index == 1 { " state=\"hidden\"" } else { "" };
        workbook_sheets.push_str(&format!(
            "<sheet name=\"{name}\" sheetId=\"{number}\"{state} r:id=\"rId{number}\"/>"
        ));
        workbook_rels.push_str(&format!(
            "<Relationship Id=\"rId{number}\" Type=\"{relationships}/worksheet\" Target=\"worksheets/sheet{number}.xml\"/>"
        ));
        parts.push((
            format!("xl/worksheets/sheet{number}.xml"),
            format!("<?xml version=\"1.0\" encoding=\"UTF-8\" standalone=\"yes\"?>\r\n<worksheet xmlns=\"{main}\"><dimension ref=\"A1:ZZ99999\"/><sheetData>{data}</sheetData></worksheet>"),
        ));
    }
    let flag = if date1904 {
        "<workbookPr date1904=\"1\"/>"
    } else {
        "<workbookPr/>"
    };
    parts.push((
        "xl/workbook.xml".to_string(),
        format!("<workbook xmlns=\"{main}\" xmlns:r=\"{relationships}\">{flag}<sheets>{workbook_sheets}</sheets></workbook>"),
    ));
    parts.push((
        "xl/_rels/workbook.xml.rels".to_string(),
        format!("<Relationships xmlns=\"http://schemas.openxmlformats.org/package/2006/relationships\">{workbook_rels}</Relationships>"),
    ));
    parts.push((
        "_rels/.rels".to_string(),
        format!("<Relationships xmlns=\"http://schemas.openxmlformats.org/package/2006/relationships\"><Relationship Id=\"rId1\" Type=\"{relationships}/officeDocument\" Target=\"xl/workbook.xml\"/></Relationships>"),
    ));
    parts.push((
        "xl/sharedStrings.xml".to_string(),
        format!("<sst xmlns=\"{main}\">{sst}</sst>"),
    ));
    parts.push((
        "xl/styles.xml".to_string(),
        format!("<styleSheet xmlns=\"{main}\">{styles}</styleSheet>"),
    ));
    parts.push(("[Content_Types].xml".to_string(), "<Types/>".to_string()));
    let borrowed: Vec<(&str, &str)> = parts
        .iter()
        .map(|(name, content)| (name.as_str(), content.as_str()))
        .collect();
    write_package(path, &borrowed);
}

const HAND_MADE_SST: &str = "<si><t>plain</t></si>\
    <si><r><rPr><b/></rPr><t xml:space=\"preserve\">rich </t></r><r><t>run</t></r></si>\
    <si><t>漢字</t><rPh sb=\"0\" eb=\"2\"><t>カンジ</t></rPh></si>\
    <si><t>  trimmed  </t></si>\
    <si><t xml:space=\"preserve\">  kept  </t></si>\
    <si><t>&amp;&lt;&gt;&quot;&apos;&#169;&#x2713;_x000A__xD83D__xDE00_</t></si>\
    <si><t/></si>\
    <si><t>line\r\nbreak</t></si>";

const HAND_MADE_STYLES: &str = "<numFmts count=\"99\"><numFmt numFmtId=\"164\" formatCode=\"yyyy\\-mm\\-dd\"/>\
    <numFmt numFmtId=\"165\" formatCode=\"&quot;0000&quot;\"/><numFmt numFmtId=\"166\" formatCode=\"[h]:mm\"/></numFmts>\
    <cellXfs count=\"99999\"><xf numFmtId=\"0\"/><xf numFmtId=\"14\"/><xf numFmtId=\"164\"/><xf numFmtId=\"165\"/>\
    <xf numFmtId=\"166\"/><xf numFmtId=\"10\"/><xf numFmtId=\"46\"/></cellXfs>";

/// A sheet with every cell kind, cells and rows without `r`, and empty rows and columns.
fn hand_made_sheet(prefix: &str) -> String {
    let p = prefix;
    let mut cells = String::new();
    cells.push_str(&format!(
        "<{p}row r=\"1\"><{p}c r=\"A1\" t=\"s\"><{p}v>0</{p}v></{p}c><{p}c t=\"s\"><{p}v>1</{p}v></{p}c><{p}c t=\"s\"><{p}v>2</{p}v></{p}c>\
         <{p}c t=\"s\"><{p}v>3</{p}v></{p}c><{p}c t=\"s\"><{p}v>4</{p}v></{p}c><{p}c t=\"s\"><{p}v>5</{p}v></{p}c><{p}c r=\"H1\" t=\"s\"><{p}v>7</{p}v></{p}c></{p}row>"
    ));
    cells.push_str(&format!(
        "<{p}row><{p}c><{p}v>1.5</{p}v></{p}c><{p}c t=\"b\"><{p}v>0</{p}v></{p}c><{p}c t=\"e\"><{p}v>#DIV/0!</{p}v></{p}c>\
         <{p}c t=\"str\"><{p}f>A2&amp;\"x\"</{p}f><{p}v>1.5x_x0009_&amp;</{p}v></{p}c><{p}c t=\"d\"><{p}v>2024-02-29T13:45:30</{p}v></{p}c>\
         <{p}c t=\"inlineStr\"><{p}is><{p}t xml:space=\"preserve\"> inline </{p}t></{p}is></{p}c><{p}c t=\"inlineStr\"><{p}is><{p}r><{p}t>in</{p}t></{p}r><{p}r><{p}t>line</{p}t></{p}r></{p}is></{p}c></{p}row>"
    ));
    cells.push_str(&format!("<{p}row r=\"4\"/><{p}row r=\"6\" spans=\"1:9\">"));
    for style in 0..7 {
        cells.push_str(&format!("<{p}c s=\"{style}\"><{p}v>45351.75</{p}v></{p}c>"));
    }
    cells.push_str(&format!(
        "<{p}c r=\"K6\" s=\"99\"><{p}v>12</{p}v></{p}c><{p}c r=\"M6\"><{p}v>not a number</{p}v></{p}c><{p}c r=\"N6\"><{p}v>1E3</{p}v></{p}c>\
         <{p}c r=\"O6\" t=\"n\"><{p}v></{p}v></{p}c><{p}c r=\"P6\" t=\"s\"><{p}v>6</{p}v></{p}c><{p}c r=\"Q6\"><{p}f>1+1</{p}f></{p}c></{p}row>"
    ));
    cells.push_str(&format!(
        "<{p}row r=\"9\"><{p}c r=\"B9\" t=\"b\"><{p}v>true</{p}v></{p}c><{p}c r=\"XFD9\"><{p}v>-0</{p}v></{p}c></{p}row>"
    ));
    cells
}

#[test]
fn hand_made_packages_with_every_cell_kind_read_the_same_with_both_readers() {
    let dir = TempDir::new();
    let strict = (
        "http://purl.oclc.org/ooxml/spreadsheetml/main",
        "http://purl.oclc.org/ooxml/officeDocument/relationships",
    );
    let transitional = (MAIN_NAMESPACE, RELATIONSHIPS);
    let mut found = Vec::new();
    for (name, prefix, namespaces, date1904) in [
        ("plain.xlsx", "", transitional, false),
        ("epoch1904.xlsm", "", transitional, true),
        ("strict.xlsx", "", strict, false),
        ("prefixed.xlsx", "x:", transitional, false),
    ] {
        let path = dir.path(name);
        let sheet = hand_made_sheet(prefix);
        let sheet = if prefix.is_empty() {
            sheet
        } else {
            // prefixed elements need the prefix declared; the default stays for the root
            sheet.replace(
                "<x:row",
                "<x:row xmlns:x=\"http://schemas.openxmlformats.org/spreadsheetml/2006/main\"",
            )
        };
        hand_made_package(
            &path,
            &[
                ("Data", &sheet),
                (
                    "Hidden",
                    "<row r=\"1\"><c r=\"A1\" t=\"s\"><v>0</v></c></row>",
                ),
            ],
            HAND_MADE_SST,
            HAND_MADE_STYLES,
            date1904,
            namespaces,
        );
        found.extend(reader_differences(&path, false));
        let rows = read_sheet(&path, "Data", Side::Ours).expect("the package reads");
        assert_eq!(rows.len(), 4, "{name}: {rows:?}");
    }
    assert!(found.is_empty(), "{}", found.join("\n"));
}

/// Rows of the generated workbook compared; IMPORTER_DIFF_ROWS raises it (the release
/// check before a change to the reader runs 100000).
fn generated_row_count() -> String {
    std::env::var("IMPORTER_DIFF_ROWS").unwrap_or_else(|_| "20000".to_string())
}

#[test]
fn generated_business_workbooks_read_the_same_with_both_readers() {
    let dir = TempDir::new();
    let path = dir.path("generated.xlsx");
    let rows = generated_row_count();
    let run = crate::util::run_importer(
        &[
            "generate",
            "--rows",
            &rows,
            "--seed",
            "7",
            "--bad-rows",
            "0.01",
            path.to_str().expect("utf-8 path"),
        ],
        None,
    );
    assert_eq!(run.code, 0, "{run:?}");
    let found = reader_differences(&path, false);
    assert!(found.is_empty(), "{}", found.join("\n"));
}

#[test]
fn formula_cells_without_cached_values_are_warned_about_once() {
    let db = TestDb::new();
    let run = db.importer(&[
        "run",
        "--dry-run",
        "--format",
        "json",
        "-t",
        "formulas",
        fixture("formulas_openpyxl_uncached.xlsx")
            .to_str()
            .expect("utf-8 path"),
    ]);
    assert_eq!(run.code, 0, "{run:?}");
    let warning = "8 formula cells have no cached value and load as NULL (first: Data!B2); \
                   open and save the file in a spreadsheet program to compute them";
    assert_eq!(run.stderr.matches(warning).count(), 1, "{run:?}");
    let calamine = db.importer(&[
        "run",
        "--dry-run",
        "--xlsx-reader",
        "calamine",
        "--format",
        "json",
        "-t",
        "formulas",
        fixture("formulas_openpyxl_uncached.xlsx")
            .to_str()
            .expect("utf-8 path"),
    ]);
    assert_eq!(calamine.code, 0, "{calamine:?}");
    assert!(!calamine.stderr.contains("no cached value"), "{calamine:?}");
    for field in ["total_records", "success_count", "error_count"] {
        assert_eq!(calamine.json()[field], run.json()[field], "{field}");
    }
}

#[test]
fn an_encrypted_workbook_is_one_error_line_saying_so() {
    let db = TestDb::new();
    let dir = TempDir::new();
    let path = dir.path("secret.xlsx");
    let mut bytes = vec![0xD0, 0xCF, 0x11, 0xE0, 0xA1, 0xB1, 0x1A, 0xE1];
    bytes.resize(4096, 0);
    std::fs::write(&path, bytes).expect("temp file is writable");
    let run = db.importer(&[
        "run",
        "--dry-run",
        "-t",
        "secret",
        path.to_str().expect("utf-8 path"),
    ]);
    let line = fatal_error_line(&run);
    assert!(line.contains("password-protected"), "{line}");
    assert!(line.contains("secret.xlsx"), "{line}");
}

#[test]
fn a_missing_sheet_part_and_a_broken_cell_are_one_error_line_naming_them() {
    let db = TestDb::new();
    let dir = TempDir::new();
    let missing = dir.path("missing.xlsx");
    hand_made_package(
        &missing,
        &[("Data", "<row r=\"1\"><c r=\"A1\"><v>1</v></c></row>")],
        "",
        "",
        false,
        (MAIN_NAMESPACE, RELATIONSHIPS),
    );
    // the same package without its sheet part
    let bytes = std::fs::read(&missing).expect("package reads");
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes)).expect("package is a zip");
    let mut parts = Vec::new();
    for index in 0..archive.len() {
        let mut member = archive.by_index(index).expect("member");
        let mut content = String::new();
        std::io::Read::read_to_string(&mut member, &mut content).expect("member is text");
        let name = member.name().expect("member name").to_string();
        if name != "xl/worksheets/sheet1.xml" {
            parts.push((name, content));
        }
    }
    let borrowed: Vec<(&str, &str)> = parts
        .iter()
        .map(|(name, content)| (name.as_str(), content.as_str()))
        .collect();
    write_package(&missing, &borrowed);
    let run = db.importer(&[
        "run",
        "--dry-run",
        "-t",
        "missing",
        missing.to_str().expect("utf-8 path"),
    ]);
    let line = fatal_error_line(&run);
    assert!(
        line.contains("missing.xlsx") && line.contains("\"Data\"") && line.contains("sheet1.xml"),
        "{line}"
    );

    let broken = dir.path("broken.xlsx");
    hand_made_package(
        &broken,
        &[(
            "Data",
            "<row r=\"1\"><c r=\"A1\"><v>1</v></c></row><row r=\"2\"><c r=\"C2\" t=\"b\"><v>maybe</v></c></row>",
        )],
        "",
        "",
        false,
        (MAIN_NAMESPACE, RELATIONSHIPS),
    );
    let run = db.importer(&[
        "run",
        "--dry-run",
        "-t",
        "broken",
        broken.to_str().expect("utf-8 path"),
    ]);
    let line = fatal_error_line(&run);
    assert!(
        line.contains("broken.xlsx") && line.contains("\"Data\"") && line.contains("cell C2"),
        "{line}"
    );
}

#[test]
fn every_xlsx_crasher_ends_in_a_normal_run_or_one_error_line_in_bounded_time() {
    // the hostile inputs kept as regression fixtures (see tests/fixtures/README.md)
    let crashers = fixture("crashers");
    let paths = workbooks_in(&crashers);
    assert!(
        !paths.is_empty(),
        "the crashers are found in {}",
        crashers.display()
    );
    let db = TestDb::new();
    for path in paths {
        let started = Instant::now();
        let run = db.importer(&[
            "run",
            "--dry-run",
            "-t",
            "fz",
            path.to_str().expect("utf-8 path"),
        ]);
        let elapsed = started.elapsed();
        assert!(
            elapsed < Duration::from_secs(20),
            "{}: {elapsed:?}",
            path.display()
        );
        if run.code != 0 {
            let line = fatal_error_line(&run);
            assert!(
                line.len() < 1000 && !line.contains('\0'),
                "{}: {line}",
                path.display()
            );
        }
    }
}

/// Seeded mutations of a small workbook's parts: flipped bytes, cut parts, duplicated
/// spans, huge numbers in attributes.
fn mutate(content: &str, random: &mut ChaCha8Rng) -> String {
    let mut bytes = content.as_bytes().to_vec();
    for _ in 0..random.random_range(1..6) {
        if bytes.is_empty() {
            break;
        }
        let at = random.random_range(0..bytes.len());
        match random.random_range(0..5) {
            0 => bytes[at] = random.random(),
            1 => bytes.truncate(at),
            2 => {
                let end = (at + random.random_range(1..200)).min(bytes.len());
                let span = bytes[at..end].to_vec();
                for _ in 0..random.random_range(1..50) {
                    bytes.splice(at..at, span.iter().copied());
                }
            }
            3 => bytes
                .splice(at..at, b"4294967295".iter().copied())
                .for_each(drop),
            _ => bytes
                .splice(
                    at..at,
                    b"<c r=\"XFD1048576\" t=\"s\"><v>99</v></c>".iter().copied(),
                )
                .for_each(drop),
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

#[test]
fn mutated_workbooks_never_panic_hang_or_blow_up() {
    let dir = TempDir::new();
    let mut random = ChaCha8Rng::seed_from_u64(9);
    let sheet = hand_made_sheet("");
    let path = dir.path("mutant.xlsx");
    for round in 0..300 {
        let (mut sheet_xml, mut sst, mut styles) = (
            sheet.clone(),
            HAND_MADE_SST.to_string(),
            HAND_MADE_STYLES.to_string(),
        );
        match round % 3 {
            0 => sheet_xml = mutate(&sheet_xml, &mut random),
            1 => sst = mutate(&sst, &mut random),
            _ => styles = mutate(&styles, &mut random),
        }
        hand_made_package(
            &path,
            &[("Data", &sheet_xml)],
            &sst,
            &styles,
            false,
            (MAIN_NAMESPACE, RELATIONSHIPS),
        );
        let started = Instant::now();
        let outcome = std::panic::catch_unwind(|| read_sheet(&path, "Data", Side::Ours));
        assert!(outcome.is_ok(), "round {round} panicked");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "round {round} took {:?}",
            started.elapsed()
        );
        if let Ok(Err(message)) = outcome {
            assert!(
                !message.contains('\n') && message.len() < 2000,
                "round {round}: {message}"
            );
        }
    }
}
