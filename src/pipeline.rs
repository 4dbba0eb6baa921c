//! The shared front end of every strategy: a reader on a blocking thread reads the sheet,
//! converts each row, records conversion rejections (once, here) and sends the good rows in
//! chunks into a bounded channel. Strategies only group and write what comes out.
//!
//! Back-pressure: the channel holds [`CHUNKS_PER_WORKER`] chunks per worker, so a slow
//! server slows the reader instead of filling memory.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::Arc;

use calamine::Data;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::warn;

use crate::convert::{Rejection, Value, cell_text, convert_cell};
use crate::job::ImportJob;
use crate::schema::Column;
use crate::source::{SheetRow, read_rows};
use crate::stats::Tally;

/// Chunks the channel holds per worker before the reader waits.
pub const CHUNKS_PER_WORKER: usize = 2;

/// Most bytes of text a chunk gathers before it is sent, whatever its row count: a sheet
/// of rows of megabytes (one long value in many cells) then travels a few rows at a time,
/// so what the channel and the workers hold stays near a few times this, not `chunk_rows`
/// times a row's limit (16 MiB). Real rows never reach it: a chunk of 1,000 rows of 16 KiB.
pub const MAX_CHUNK_TEXT_BYTES: usize = 16 << 20;

/// A task's result: what it counted, and the fatal error that stopped it, if any. The
/// count is kept even on error, so the stats can say exactly what was written.
pub type TaskOutcome = (Tally, anyhow::Result<()>);

/// A row that passed conversion, ready to write.
#[derive(Debug, Clone)]
pub struct ConvertedRow {
    /// 1-based row number in the sheet.
    pub row_number: u32,
    /// One value per sheet column (in sheet order), in text input form.
    pub values: Vec<Value>,
    /// The cell text of the positions whose value is not that text (a date cell, a
    /// trimmed integer, ...), so the rejects file can show the row as it was. Text cells
    /// are moved into `values`, not copied: most rows carry nothing here.
    pub originals: Vec<(usize, String)>,
}

impl ConvertedRow {
    /// The row's cells as text, as the rejects file shows them.
    pub fn cell_texts(&self) -> Vec<String> {
        let mut texts: Vec<String> = self
            .values
            .iter()
            .map(|value| value.clone().unwrap_or_default())
            .collect();
        for (position, original) in &self.originals {
            texts[*position].clone_from(original);
        }
        texts
    }
}

/// Rows sent together through the channel.
pub type Chunk = Vec<ConvertedRow>;

/// Starts the reader in `tasks` and returns the receiving end of its channel. The reader
/// sends chunks of `chunk_rows` rows and stops at the end of the sheet, when the job is
/// cancelled, or when every receiver is gone.
pub fn start(
    job: &Arc<ImportJob>,
    chunk_rows: usize,
    tasks: &mut JoinSet<TaskOutcome>,
) -> mpsc::Receiver<Chunk> {
    let (sender, receiver) = mpsc::channel(CHUNKS_PER_WORKER * job.workers.max(1));
    let job = Arc::clone(job);
    tasks.spawn_blocking(move || read_and_convert(&job, chunk_rows, &sender));
    receiver
}

/// Converts every cell of a row for its column (one column per sheet column). A row with a
/// bad cell is refused as a whole, for its first bad column, and handed back as the row
/// number, the rejection and the row's cells as text; so is a row the reader could not
/// read (its own rejection), so that both are recorded in one place.
pub fn convert_row(
    columns: &[Column],
    row: SheetRow,
) -> Result<ConvertedRow, (u32, Rejection, Vec<String>)> {
    let SheetRow {
        row_number,
        cells,
        rejection,
    } = row;
    if let Some(rejection) = rejection {
        return Err((row_number, rejection, cells.iter().map(cell_text).collect()));
    }
    let mut values: Vec<Value> = Vec::with_capacity(columns.len());
    let mut originals = Vec::new();
    let mut cells = cells.into_iter();
    for (position, column) in columns.iter().enumerate() {
        let cell = cells.next().unwrap_or(Data::Empty);
        match cell {
            // the hot path: a text cell into a text column is its own value, moved
            Data::String(text) if column.column_type.is_text() && !text.is_empty() => {
                values.push(Some(text));
            }
            cell => match convert_cell(&cell, column) {
                Ok(value) => {
                    let text = cell_text(&cell);
                    if value.as_deref().unwrap_or_default() != text {
                        originals.push((position, text));
                    }
                    values.push(value);
                }
                Err(rejection) => {
                    let mut texts = ConvertedRow {
                        row_number,
                        values,
                        originals,
                    }
                    .cell_texts();
                    texts.push(cell_text(&cell));
                    texts.extend(cells.map(|cell| cell_text(&cell)));
                    return Err((row_number, rejection, texts));
                }
            },
        }
    }
    Ok(ConvertedRow {
        row_number,
        values,
        originals,
    })
}

/// Upsert: the last row number of every key in the sheet. Rows whose key has a NULL or a
/// value that does not convert are left out: they cannot conflict, or are rejected anyway.
fn last_rows_by_key(job: &ImportJob) -> anyhow::Result<HashMap<Vec<String>, u32>> {
    let mut last_rows = HashMap::new();
    let mut is_header = true;
    read_rows(&job.source, &mut |row| {
        if std::mem::take(&mut is_header) || row.rejection.is_some() {
            // an unreadable row is rejected and never written: it supersedes nothing
            return ControlFlow::Continue(());
        }
        if job.cancel.is_cancelled() {
            return ControlFlow::Break(());
        }
        let key: Option<Vec<String>> = job
            .key_positions
            .iter()
            .map(|&position| {
                let cell = row.cells.get(position).unwrap_or(&Data::Empty);
                convert_cell(cell, &job.columns[position]).ok().flatten()
            })
            .collect();
        if let Some(key) = key {
            last_rows.insert(key, row.row_number);
        }
        ControlFlow::Continue(())
    })?;
    Ok(last_rows)
}

/// Upsert: the rejection of a row that a later row with the same key supersedes (of two
/// rows with one key, the later wins, as README's upsert mode says).
fn superseded_by(
    job: &ImportJob,
    last_rows: &HashMap<Vec<String>, u32>,
    row: &ConvertedRow,
) -> Option<Rejection> {
    let key: Vec<String> = job
        .key_positions
        .iter()
        .map(|&position| row.values[position].clone())
        .collect::<Option<_>>()?;
    let last = *last_rows.get(&key)?;
    (last != row.row_number).then(|| Rejection {
        column: job
            .key_positions
            .iter()
            .map(|&position| job.columns[position].name.as_str())
            .collect::<Vec<_>>()
            .join(","),
        reason: format!("superseded by row {last} (same key)"),
    })
}

fn read_and_convert(
    job: &ImportJob,
    chunk_rows: usize,
    sender: &mpsc::Sender<Chunk>,
) -> TaskOutcome {
    let mut tally = Tally::default();
    let width = job.columns.len();
    let mut chunk: Chunk = Vec::with_capacity(chunk_rows);
    let mut chunk_text_bytes = 0_usize;
    let mut fatal: anyhow::Result<()> = Ok(());
    let mut cells_beyond_header = 0u64;
    let mut is_header = true;
    // rows already added to the progress counter
    let mut counted_rows = 0u64;
    let last_rows = if job.key_positions.is_empty() {
        None
    } else {
        match last_rows_by_key(job) {
            Ok(last_rows) => Some(last_rows),
            Err(error) => return (tally, Err(error)),
        }
    };

    let read = read_rows(&job.source, &mut |mut row| {
        if is_header {
            // the first row yielded is the header, already mapped
            is_header = false;
            return ControlFlow::Continue(());
        }
        if job.cancel.is_cancelled() {
            return ControlFlow::Break(());
        }
        if row.cells.len() > width {
            if row.cells[width..]
                .iter()
                .any(|cell| !matches!(cell, Data::Empty))
            {
                cells_beyond_header += 1;
            }
            row.cells.truncate(width);
            if row.rejection.is_none() && row.cells.iter().all(|cell| matches!(cell, Data::Empty)) {
                return ControlFlow::Continue(());
            }
        }
        if job
            .already_in
            .as_ref()
            .is_some_and(|rows| rows.covers(row.row_number))
        {
            // resuming: an earlier run of the same content committed this row
            return ControlFlow::Continue(());
        }
        tally.rows_read += 1;
        let converted = convert_row(&job.columns, row).and_then(|converted| {
            match last_rows
                .as_ref()
                .and_then(|last| superseded_by(job, last, &converted))
            {
                Some(rejection) => Err((converted.row_number, rejection, converted.cell_texts())),
                None => Ok(converted),
            }
        });
        match converted {
            Ok(converted) => {
                chunk_text_bytes += converted
                    .values
                    .iter()
                    .flatten()
                    .map(String::len)
                    .sum::<usize>();
                chunk.push(converted);
            }
            Err((row_number, rejection, cell_texts)) => {
                tally.error_count += 1;
                if let Err(error) = job.rejects.record(row_number, &rejection, &cell_texts) {
                    fatal = Err(error);
                    return ControlFlow::Break(());
                }
                return ControlFlow::Continue(());
            }
        }
        if chunk.len() >= chunk_rows || chunk_text_bytes >= MAX_CHUNK_TEXT_BYTES {
            chunk_text_bytes = 0;
            job.progress.add(tally.rows_read - counted_rows);
            counted_rows = tally.rows_read;
            let full = std::mem::replace(&mut chunk, Vec::with_capacity(chunk_rows));
            if sender.blocking_send(full).is_err() {
                // every writer is gone (they stopped on an error): stop reading
                return ControlFlow::Break(());
            }
        }
        ControlFlow::Continue(())
    });
    job.progress.add(tally.rows_read - counted_rows);
    if !chunk.is_empty() {
        // an error means every writer is gone, which they report themselves
        sender.blocking_send(chunk).ok();
    }
    if cells_beyond_header > 0 {
        warn!(
            row_count = cells_beyond_header,
            "rows have values right of the header's last column; those values are ignored"
        );
    }
    let result = fatal.and(read.map(|_| ()));
    (tally, result)
}
