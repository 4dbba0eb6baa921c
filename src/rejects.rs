//! The rejects log: every rejected row is counted here, written to the `--rejects` CSV file
//! when one was asked for, and checked against `--max-errors`.
//!
//! It is the one place shared by the reader (conversion rejections) and the writers (rows the
//! server refused); a std mutex serialises the file, and is never held across an `.await`.
//! Rejections are rare next to rows, so the lock is not on the hot path of good rows.
//!
//! Each rejection is located as a spreadsheet shows it: the cell (`'Q3 Sales'!C17`, the
//! letter of the sheet column whose header maps to the column at fault) or, when the server
//! refused the row as a whole, the row (`Sheet1!17:17`). The reference ends the reason in
//! the file and is the `cell` field of the warning. Warnings carry the reason without the
//! cell value ([`Rejection::reason_without_value`]): values go only to the file.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::convert::Rejection;
use crate::schema::{column_letter, fold_header};
use crate::source::Header;

/// Rejections logged at warn level before the log goes quiet (the rest: debug, the file,
/// and one closing line that counts them).
const WARNED_REJECTIONS: u64 = 10;

/// Records rejected rows; cancels the run once more than `max_errors` were rejected.
pub struct RejectLog {
    state: Mutex<RejectState>,
    max_errors: Option<u64>,
    header_width: usize,
    /// The sheet's name as a reference spells it (quoted where needed).
    sheet_reference: String,
    /// The header cells folded, to find the sheet column of a rejection's column.
    folded_header: Vec<String>,
    cancel: CancellationToken,
    path: Option<PathBuf>,
    /// How many rejections are kept in memory.
    kept_count: usize,
}

struct RejectState {
    writer: Option<csv::Writer<BufWriter<File>>>,
    rejected_count: u64,
    /// The first `kept_count` rejections, for a caller that reports them itself.
    kept: Vec<RejectedRow>,
}

/// One rejected row as the rejects file has it, without its cells.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RejectedRow {
    /// 1-based row number in the sheet.
    pub row_number: u32,
    /// The column at fault; `None` when the server refused the row as a whole.
    pub column: Option<String>,
    /// A short reason.
    pub reason: String,
}

impl RejectLog {
    /// Opens the log; with `path`, creates the CSV file and writes its header line:
    /// `row_number,column,reason` and the sheet's own header cells.
    pub fn create(
        path: Option<&Path>,
        header: &Header,
        max_errors: Option<u64>,
        cancel: CancellationToken,
    ) -> anyhow::Result<Self> {
        let sheet_header = &header.cells;
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
                kept: Vec::new(),
            }),
            max_errors,
            header_width: sheet_header.len(),
            sheet_reference: sheet_reference(&header.sheet_name),
            folded_header: sheet_header.iter().map(|cell| fold_header(cell)).collect(),
            cancel,
            path: path.map(Path::to_path_buf),
            kept_count: 0,
        })
    }

    /// Keeps the first `kept_count` rejections in memory, for [`RejectLog::kept`].
    pub fn keeping(self, kept_count: usize) -> Self {
        RejectLog { kept_count, ..self }
    }

    /// The rejections kept so far (the first `kept_count`).
    pub fn kept(&self) -> Vec<RejectedRow> {
        self.state
            .lock()
            .expect("rejects lock is never poisoned: no panics while held")
            .kept
            .clone()
    }

    /// Rows rejected so far.
    pub fn rejected_count(&self) -> u64 {
        self.state
            .lock()
            .expect("rejects lock is never poisoned: no panics while held")
            .rejected_count
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
        if state.kept.len() < self.kept_count {
            state.kept.push(RejectedRow {
                row_number,
                column: (!rejection.column.is_empty()).then(|| rejection.column.clone()),
                reason: rejection.reason.clone(),
            });
        }
        let reference = self.reference(row_number, &rejection.column);
        if state.rejected_count <= WARNED_REJECTIONS {
            warn!(
                row_number,
                column = %rejection.column,
                cell = %reference,
                reason = %rejection.reason_without_value(),
                "row rejected"
            );
        } else {
            debug!(
                row_number,
                column = %rejection.column,
                cell = %reference,
                reason = %rejection.reason_without_value(),
                "row rejected"
            );
        }
        if let Some(writer) = state.writer.as_mut() {
            let mut record = Vec::with_capacity(3 + self.header_width);
            record.push(row_number.to_string());
            record.push(rejection.column.clone());
            // the contract fixes the columns: the reference goes at the end of the reason
            record.push(format!("{} ({reference})", rejection.reason));
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

    /// Flushes the rejects file, and says in one line how many rejected rows were not
    /// warned about one by one, and where to see them.
    pub fn finish(&self) -> anyhow::Result<()> {
        let mut state = self
            .state
            .lock()
            .expect("rejects lock is never poisoned: no panics while held");
        let unwarned = state.rejected_count.saturating_sub(WARNED_REJECTIONS);
        if unwarned > 0 {
            match &self.path {
                Some(path) => warn!(
                    row_count = unwarned,
                    "{unwarned} more rejected rows, see --rejects {}",
                    path.display()
                ),
                None => warn!(
                    row_count = unwarned,
                    "{unwarned} more rejected rows; pass --rejects FILE to see them all"
                ),
            }
        }
        if let Some(writer) = state.writer.as_mut() {
            writer.flush().with_context(|| self.path_context())?;
        }
        Ok(())
    }

    /// Where a rejection is, as a spreadsheet shows it: the cell of `column`'s sheet
    /// column, or the whole row when no single sheet column is at fault.
    fn reference(&self, row_number: u32, column: &str) -> String {
        let folded = fold_header(column);
        let sheet_column = (!folded.is_empty())
            .then(|| self.folded_header.iter().position(|name| *name == folded))
            .flatten();
        match sheet_column {
            Some(sheet_column) => format!(
                "{}!{}{row_number}",
                self.sheet_reference,
                column_letter(sheet_column)
            ),
            None => format!("{}!{row_number}:{row_number}", self.sheet_reference),
        }
    }

    fn path_context(&self) -> String {
        let path = self.path.as_deref().unwrap_or(Path::new("?"));
        format!("cannot write rejects file {}", path.display())
    }
}

/// The sheet name as a cell reference spells it: bare when a spreadsheet would accept it
/// so (letters, digits, `_` and `.`, not starting with a digit or `.`, and not itself a
/// cell reference such as `Q3` or `R1C1`), else in single quotes with `'` doubled.
fn sheet_reference(sheet_name: &str) -> String {
    let plain = sheet_name
        .chars()
        .all(|ch| ch.is_alphanumeric() || ch == '_' || ch == '.')
        && sheet_name
            .chars()
            .next()
            .is_some_and(|first| !first.is_ascii_digit() && first != '.')
        && !looks_like_a_cell(sheet_name);
    if plain {
        sheet_name.to_string()
    } else {
        format!("'{}'", sheet_name.replace('\'', "''"))
    }
}

/// Whether a name reads as a cell reference: A1 style (`Q3`, `XFD1048576`) or R1C1 style
/// (`R`, `C`, `R2`, `R2C3`, `RC`).
fn looks_like_a_cell(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    let letters = upper.chars().take_while(char::is_ascii_uppercase).count();
    let rest = &upper[letters..];
    let a1 = (1..=3).contains(&letters)
        && !rest.is_empty()
        && rest.chars().all(|ch| ch.is_ascii_digit());
    let r1c1 = {
        let (row, column) = match upper.strip_prefix('R') {
            Some(after_r) => match after_r.split_once('C') {
                Some((row, column)) => (Some(row), Some(column)),
                None => (Some(after_r), None),
            },
            None => (None, upper.strip_prefix('C')),
        };
        let digits =
            |part: Option<&str>| part.is_none_or(|part| part.chars().all(|ch| ch.is_ascii_digit()));
        (row.is_some() || column.is_some()) && digits(row) && digits(column)
    };
    a1 || r1c1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sheet_names_are_quoted_as_a_spreadsheet_needs() {
        let cases = [
            ("Sheet1", "Sheet1"),
            ("people.csv", "people.csv"),
            ("Données", "Données"),
            ("Q3 Sales", "'Q3 Sales'"),
            ("Bob's", "'Bob''s'"),
            ("2024", "'2024'"),
            ("Q3", "'Q3'"),
            ("xfd1048576", "'xfd1048576'"),
            ("R", "'R'"),
            ("R2C3", "'R2C3'"),
            ("RC", "'RC'"),
            ("Rates", "Rates"),
            ("Crm", "Crm"),
            ("Sales-2024", "'Sales-2024'"),
            ("", "''"),
        ];
        for (name, expected) in cases {
            assert_eq!(sheet_reference(name), expected, "{name:?}");
        }
    }

    #[test]
    fn a_rejection_is_located_at_its_sheet_column_or_its_row() {
        let header = Header {
            sheet_name: "Q3 Sales".to_string(),
            row_number: 1,
            cells: ["Note", "Age", "E-Mail"].map(String::from).to_vec(),
            declared_row_count: None,
        };
        let log = RejectLog::create(None, &header, None, CancellationToken::new())
            .expect("a log without a file opens");
        assert_eq!(log.reference(17, "age"), "'Q3 Sales'!B17");
        assert_eq!(log.reference(17, "e_mail"), "'Q3 Sales'!C17");
        assert_eq!(log.reference(17, ""), "'Q3 Sales'!17:17");
        assert_eq!(log.reference(17, "email,note"), "'Q3 Sales'!17:17");
    }
}
