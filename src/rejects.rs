//! The rejects log: every rejected row is counted here, written to the `--rejects` CSV file
//! when one was asked for, and checked against `--max-errors`.
//!
//! It is the one place shared by the reader (conversion rejections) and the writers (rows the
//! server refused); a std mutex serialises the file, and is never held across an `.await`.
//! Rejections are rare next to rows, so the lock is not on the hot path of good rows.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::convert::Rejection;

/// Rejections logged at warn level before the log goes quiet (the rest: debug and the file).
const WARNED_REJECTIONS: u64 = 10;

/// Records rejected rows; cancels the run once more than `max_errors` were rejected.
pub struct RejectLog {
    state: Mutex<RejectState>,
    max_errors: Option<u64>,
    header_width: usize,
    cancel: CancellationToken,
    path: Option<PathBuf>,
}

struct RejectState {
    writer: Option<csv::Writer<BufWriter<File>>>,
    rejected_count: u64,
}

impl RejectLog {
    /// Opens the log; with `path`, creates the CSV file and writes its header line:
    /// `row_number,column,reason` and the sheet's own header cells.
    pub fn create(
        path: Option<&Path>,
        sheet_header: &[String],
        max_errors: Option<u64>,
        cancel: CancellationToken,
    ) -> anyhow::Result<Self> {
        let writer = match path {
            Some(path) => {
                let file = File::create(path)
                    .with_context(|| format!("cannot create rejects file {}", path.display()))?;
                let mut writer = csv::Writer::from_writer(BufWriter::new(file));
                let mut header = vec!["row_number", "column", "reason"];
                header.extend(sheet_header.iter().map(String::as_str));
                writer
                    .write_record(&header)
                    .with_context(|| format!("cannot write rejects file {}", path.display()))?;
                Some(writer)
            }
            None => None,
        };
        Ok(RejectLog {
            state: Mutex::new(RejectState {
                writer,
                rejected_count: 0,
            }),
            max_errors,
            header_width: sheet_header.len(),
            cancel,
            path: path.map(Path::to_path_buf),
        })
    }

    /// Records one rejected row: its 1-based row number, what was wrong, and its cells as
    /// text. An error here (the rejects file cannot be written) is fatal for the run.
    pub fn record(
        &self,
        row_number: u32,
        rejection: &Rejection,
        cell_texts: &[String],
    ) -> anyhow::Result<()> {
        let mut state = self
            .state
            .lock()
            .expect("rejects lock is never poisoned: no panics while held");
        state.rejected_count += 1;
        // reasons quote cell values, which are only ever written to the rejects file
        if state.rejected_count <= WARNED_REJECTIONS {
            warn!(row_number, column = %rejection.column, "row rejected");
        } else {
            debug!(row_number, column = %rejection.column, "row rejected");
        }
        if let Some(writer) = state.writer.as_mut() {
            let mut record = Vec::with_capacity(3 + self.header_width);
            record.push(row_number.to_string());
            record.push(rejection.column.clone());
            record.push(rejection.reason.clone());
            for sheet_column in 0..self.header_width {
                record.push(cell_texts.get(sheet_column).cloned().unwrap_or_default());
            }
            writer
                .write_record(&record)
                .with_context(|| self.path_context())?;
        }
        if self
            .max_errors
            .is_some_and(|max| state.rejected_count > max)
        {
            self.cancel.cancel();
        }
        Ok(())
    }

    /// Whether more rows were rejected than `--max-errors` allows.
    pub fn limit_passed(&self) -> bool {
        let state = self
            .state
            .lock()
            .expect("rejects lock is never poisoned: no panics while held");
        self.max_errors
            .is_some_and(|max| state.rejected_count > max)
    }

    /// Flushes the rejects file.
    pub fn finish(&self) -> anyhow::Result<()> {
        let mut state = self
            .state
            .lock()
            .expect("rejects lock is never poisoned: no panics while held");
        if let Some(writer) = state.writer.as_mut() {
            writer.flush().with_context(|| self.path_context())?;
        }
        Ok(())
    }

    fn path_context(&self) -> String {
        let path = self.path.as_deref().unwrap_or(Path::new("?"));
        format!("cannot write rejects file {}", path.display())
    }
}
