//! Fuzz target: the input, written as a .xlsx, an .ods and a .csv file in turn, read to
//! the end by the in-process readers (`importer::source::read_rows`). A panic, an abort, a
//! timeout or a run past libFuzzer's RSS limit is a finding; an error is a normal outcome,
//! as long as it is one short line.

#![no_main]

use std::ops::ControlFlow;

use importer::source::{SourceSpec, read_rows};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let dir = std::env::temp_dir().join(format!("importer-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir is writable");
    for extension in ["xlsx", "ods", "csv"] {
        let path = dir.join(format!("input.{extension}"));
        std::fs::write(&path, bytes).expect("temp file is writable");
        let spec = SourceSpec {
            xlsx_reader: importer::cli::XlsxReader::Fast,
            path,
            sheet: None,
            header_row: 1,
            csv: Default::default(),
        };
        if let Err(error) = read_rows(&spec, &mut |_| ControlFlow::Continue(())) {
            let message = format!("{error:#}");
            assert!(!message.contains('\n'), "a multi-line error: {message}");
        }
    }
});
