//! Front-end throughput without a database: reading each producer style (shared strings,
//! inline strings, CSV; .xlsx with our reader and with calamine's), converting, and
//! converting + COPY-encoding into a null sink.
//! `cargo bench --bench convert`

use std::hint::black_box;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use importer::cli::{GenerateArgs, XlsxReader};
use importer::pipeline::convert_row;
use importer::schema::{Column, ColumnType};
use importer::sink::copy::encode_row;
use importer::source::{SheetRow, SourceSpec, read_rows};

/// Rows per generated input: enough to amortise opening the file, small enough to iterate.
const ROW_COUNT: u64 = 20_000;

fn generate(directory: &Path, name: &str, inline_strings: bool) -> PathBuf {
    let out = directory.join(name);
    let args = GenerateArgs {
        rows: ROW_COUNT,
        seed: 1,
        bad_rows: 0.0,
        inline_strings,
        out: out.clone(),
    };
    importer::cmd::generate::run(&args).expect("bench input is generated");
    out
}

fn spec(path: &Path, xlsx_reader: XlsxReader) -> SourceSpec {
    SourceSpec {
        path: path.to_path_buf(),
        sheet: None,
        header_row: 1,
        csv: importer::source::CsvOptions::default(),
        xlsx_reader,
        xls_reader: importer::cli::XlsReader::Fast,
    }
}

/// The columns of fixtures/businesses.sql that the generated header maps to.
fn business_columns() -> Vec<Column> {
    importer::cmd::generate::HEADER
        .iter()
        .map(|name| Column {
            name: name.to_lowercase(),
            column_type: ColumnType::Text,
            sql_type: "text".to_string(),
            not_null: *name == "Name",
            has_default: false,
            default_sql: None,
        })
        .collect()
}

/// Reads every data row (the header is skipped), handing each to `visit`.
fn for_each_row(path: &Path, xlsx_reader: XlsxReader, mut visit: impl FnMut(SheetRow)) {
    let mut is_header = true;
    read_rows(&spec(path, xlsx_reader), &mut |row| {
        if is_header {
            is_header = false;
        } else {
            visit(row);
        }
        ControlFlow::Continue(())
    })
    .expect("bench input is readable");
}

fn benches(criterion: &mut Criterion) {
    let directory = std::env::temp_dir().join(format!("importer-bench-{}", std::process::id()));
    std::fs::create_dir_all(&directory).expect("bench directory is created");
    let inputs = [
        (
            "xlsx_shared_strings",
            generate(&directory, "shared.xlsx", false),
        ),
        (
            "xlsx_inline_strings",
            generate(&directory, "inline.xlsx", true),
        ),
        ("csv", generate(&directory, "rows.csv", false)),
    ];
    let columns = business_columns();

    let mut read = criterion.benchmark_group("read");
    read.throughput(Throughput::Elements(ROW_COUNT));
    read.sample_size(10);
    for (name, path) in &inputs {
        for (reader_name, reader) in [("", XlsxReader::Fast), ("_calamine", XlsxReader::Calamine)] {
            if *name == "csv" && reader == XlsxReader::Calamine {
                continue;
            }
            read.bench_function(format!("{name}{reader_name}"), |bencher| {
                bencher.iter(|| {
                    let mut row_count = 0u64;
                    for_each_row(path, reader, |row| {
                        black_box(row);
                        row_count += 1;
                    });
                    assert_eq!(row_count, ROW_COUNT);
                })
            });
        }
    }
    read.finish();

    let mut rows = Vec::new();
    for_each_row(&inputs[0].1, XlsxReader::Fast, |row| rows.push(row));
    let mut convert = criterion.benchmark_group("convert");
    convert.throughput(Throughput::Elements(ROW_COUNT));
    convert.bench_function("convert", |bencher| {
        bencher.iter(|| {
            for row in rows.iter().cloned() {
                black_box(convert_row(&columns, row).is_ok());
            }
        })
    });
    convert.bench_function("convert_and_copy_encode", |bencher| {
        let mut encoded = Vec::with_capacity(4 << 20);
        bencher.iter(|| {
            encoded.clear();
            for row in rows.iter().cloned() {
                if let Ok(converted) = convert_row(&columns, row) {
                    encode_row(&converted.values, &mut encoded);
                }
            }
            black_box(encoded.len())
        })
    });
    convert.finish();

    let mut front_end = criterion.benchmark_group("read_convert_encode");
    front_end.throughput(Throughput::Elements(ROW_COUNT));
    front_end.sample_size(10);
    for (name, path) in &inputs {
        front_end.bench_function(*name, |bencher| {
            let mut encoded = Vec::with_capacity(4 << 20);
            bencher.iter(|| {
                encoded.clear();
                for_each_row(path, XlsxReader::Fast, |row| {
                    if let Ok(converted) = convert_row(&columns, row) {
                        encode_row(&converted.values, &mut encoded);
                    }
                });
                black_box(encoded.len())
            })
        });
    }
    front_end.finish();
    std::fs::remove_dir_all(&directory).ok();
}

criterion_group!(convert_benches, benches);
criterion_main!(convert_benches);
