//! The contained calamine reader: the binary reads .xlsb, and .xls and .xlsx when calamine
//! reads them (`--xls-reader calamine`, an .xls older than BIFF8, `--xlsx-reader calamine`),
//! in a child process of its own executable (`importer read-cells FILE`), so that what calamine
//! cannot be kept from doing on a hostile file (panic, abort on an allocation the file
//! claims, loop for minutes) ends the child, not the import, and becomes one error line.
//!
//! The child runs with an address-space limit of [`MEMORY_BASE_BYTES`] (2 GiB) plus
//! [`MEMORY_BYTES_PER_FILE_BYTE`] times the file's size (what a real workbook of that size
//! needs, with room), a CPU-time limit scaled the same way, no core dumps, and
//! `PR_SET_PDEATHSIG` so it dies with the parent. It sets a silent panic hook and streams
//! the sheet's cells on stdout in a compact binary framing, buffered (one write per
//! [`PIPE_BUFFER_BYTES`], no syscall per cell); the parent decodes them into the same
//! `RowAssembler` as every other format, checking each text length before allocating it.
//! A panic or an error in the child arrives as one framed message; a child killed by a
//! signal (the memory limit makes allocations fail, which aborts) is explained from how
//! it ended. The parent kills the child as soon as it has what it needs (the header) or
//! stops, and always waits for it.
//!
//! Frames (integers little-endian): `S` len:u32 name, then optionally `D` last_row:u32;
//! `C` row:u32 column:u32 kind:u8 payload; `E` len:u32 message; `Z` (the end). Payloads:
//! text-like kinds len:u32 bytes; int i64; float f64; bool u8; date-time f64 flags:u8
//! (bit 0 duration, bit 1 the 1904 epoch); error u8 code.

use std::any::Any;
use std::cell::RefCell;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::ops::ControlFlow;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, ExitCode, ExitStatus, Stdio};
use std::thread::JoinHandle;

use anyhow::{Context, anyhow, bail};
use calamine::{CellErrorType, Data, ExcelDateTime, ExcelDateTimeType};

use super::{
    CellView, MAX_CELL_TEXT_BYTES, RowAssembler, SheetSummary, cell_too_long, read_calamine,
};
use crate::message::{shown, shown_path};

/// Address space the child may use whatever the file: 2 GiB. calamine holds an .xls sheet
/// as a dense grid of 32-byte cells, and a real .xls may have a cell at its last position
/// (IV65536: 16.7 million cells, 512 MiB, built while the cells read are still held), so
/// a small honest file can need 1.2 GB; the binary and its allocator need the rest.
const MEMORY_BASE_BYTES: u64 = 2 << 30;

/// Address space the child may use per byte of the file: a real workbook expands about
/// 5-15 times when its sheet and shared strings are inflated and held as cells.
const MEMORY_BYTES_PER_FILE_BYTE: u64 = 32;

/// CPU seconds the child may use whatever the file's size.
const CPU_BASE_SECONDS: u64 = 10;

/// CPU seconds the child may use per MiB of the file (a 1M-cell .xls takes about one).
const CPU_SECONDS_PER_MIB: u64 = 4;

/// Pipe buffer on both ends, in bytes: one write per this much of cells.
const PIPE_BUFFER_BYTES: usize = 64 * 1024;

/// Longest error message accepted from the child, in bytes.
const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// Bytes of the child's stderr kept to explain how it ended (an allocation failure's size).
const KEPT_STDERR_BYTES: usize = 16 * 1024;

const FRAME_SHEET: u8 = b'S';
const FRAME_DECLARED_LAST_ROW: u8 = b'D';
const FRAME_CELL: u8 = b'C';
const FRAME_ERROR: u8 = b'E';
const FRAME_END: u8 = b'Z';

const KIND_TEXT: u8 = 0;
const KIND_INT: u8 = 1;
const KIND_FLOAT: u8 = 2;
const KIND_BOOL: u8 = 3;
const KIND_DATE_TIME: u8 = 4;
const KIND_DATE_TIME_ISO: u8 = 5;
const KIND_DURATION_ISO: u8 = 6;
const KIND_ERROR: u8 = 7;

/// Reads the chosen sheet of `path` in a contained child of `executable` into `rows`.
pub(super) fn read_sheet(
    executable: &Path,
    path: &Path,
    wanted_sheet: Option<&str>,
    rows: &mut RowAssembler<'_>,
) -> anyhow::Result<SheetSummary> {
    let file_bytes = std::fs::metadata(path)
        .with_context(|| format!("cannot open {}", shown_path(path)))?
        .len();
    let limits = Limits::for_file(file_bytes);
    let mut child = ReaderChild::start(executable, path, wanted_sheet, limits)
        .with_context(|| format!("cannot start the reader for {}", shown_path(path)))?;
    let mut input = BufReader::with_capacity(
        PIPE_BUFFER_BYTES,
        child.stdout.take().expect("the child's stdout is piped"),
    );
    let received = receive(&mut input, rows);
    // with the pipe closed, a child still writing gets EPIPE and exits
    drop(input);
    let stop_early = match &received {
        Ok(Received::Stopped(_)) => true,
        Err(error) => error.is::<LimitError>(),
        Ok(_) => false,
    };
    let ended = child.finish(stop_early);
    match received {
        Ok(Received::Finished(summary)) => Ok(summary),
        // the visitor has what it needs (or a limit stopped it): how the child ends no
        // longer matters, it was killed
        Ok(Received::Stopped(summary)) => Ok(summary),
        Ok(Received::Failed(message)) => Err(anyhow!(message)),
        Err(error) if error.is::<LimitError>() => Err(error),
        Err(error) => Err(explain_ending(&ended, &limits, path).unwrap_or_else(|| {
            error.context(format!(
                "cannot read {}: the reader's output ended early",
                shown_path(path)
            ))
        })),
    }
}

/// What the parent got from the child.
enum Received {
    /// The end frame: every cell was read.
    Finished(SheetSummary),
    /// The visitor broke, or a limit stopped reading (its error is in `rows`).
    Stopped(SheetSummary),
    /// The child's own error message, ready to show.
    Failed(String),
}

/// A cell past the text limit: the error to report as it is, not as a failed child.
#[derive(Debug)]
struct LimitError(anyhow::Error);

impl std::fmt::Display for LimitError {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "{:#}", self.0)
    }
}

impl std::error::Error for LimitError {}

/// Decodes frames into `rows` until the end frame, the child's error, or `rows` stops.
fn receive(input: &mut impl Read, rows: &mut RowAssembler<'_>) -> anyhow::Result<Received> {
    let mut summary = SheetSummary {
        sheet_name: String::new(),
        declared_last_row: None,
    };
    loop {
        if rows.stopped {
            return Ok(Received::Stopped(summary));
        }
        match read_u8(input)? {
            FRAME_SHEET => summary.sheet_name = read_text(input, MAX_MESSAGE_BYTES)?,
            FRAME_DECLARED_LAST_ROW => summary.declared_last_row = Some(read_u32(input)?),
            FRAME_CELL => {
                let row_index = read_u32(input)?;
                let column_index = read_u32(input)?;
                let cell =
                    read_cell(input).map_err(|error| match error.downcast::<CellTooLong>() {
                        Ok(CellTooLong(length)) => anyhow::Error::new(LimitError(cell_too_long(
                            row_index,
                            column_index,
                            length,
                        ))),
                        Err(error) => error,
                    })?;
                rows.push_owned((row_index, column_index), cell);
            }
            FRAME_ERROR => {
                return Ok(Received::Failed(read_text(input, MAX_MESSAGE_BYTES)?));
            }
            FRAME_END => return Ok(Received::Finished(summary)),
            other => bail!("the reader sent an unknown frame {other:#04x}"),
        }
    }
}

/// A text frame longer than a cell may hold, by its length prefix.
#[derive(Debug)]
struct CellTooLong(usize);

impl std::fmt::Display for CellTooLong {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "a cell of {} bytes", self.0)
    }
}

impl std::error::Error for CellTooLong {}

fn read_cell(input: &mut impl Read) -> anyhow::Result<Data> {
    let kind = read_u8(input)?;
    let text = |input: &mut dyn Read| -> anyhow::Result<String> {
        let length = read_u32(input)? as usize;
        if length > MAX_CELL_TEXT_BYTES {
            return Err(CellTooLong(length).into());
        }
        read_exact_text(input, length)
    };
    Ok(match kind {
        KIND_TEXT => Data::String(text(input)?),
        KIND_DATE_TIME_ISO => Data::DateTimeIso(text(input)?),
        KIND_DURATION_ISO => Data::DurationIso(text(input)?),
        KIND_INT => Data::Int(i64::from_le_bytes(read_array(input)?)),
        KIND_FLOAT => Data::Float(f64::from_le_bytes(read_array(input)?)),
        KIND_BOOL => Data::Bool(read_u8(input)? != 0),
        KIND_DATE_TIME => {
            let value = f64::from_le_bytes(read_array(input)?);
            let flags = read_u8(input)?;
            let datetime_type = match flags & 1 {
                0 => ExcelDateTimeType::DateTime,
                _ => ExcelDateTimeType::TimeDelta,
            };
            Data::DateTime(ExcelDateTime::new(value, datetime_type, flags & 2 != 0))
        }
        KIND_ERROR => Data::Error(error_from_code(read_u8(input)?)),
        other => bail!("the reader sent an unknown cell kind {other}"),
    })
}

fn read_array<const N: usize>(input: &mut (impl Read + ?Sized)) -> io::Result<[u8; N]> {
    let mut bytes = [0_u8; N];
    input.read_exact(&mut bytes)?;
    Ok(bytes)
}

fn read_u8(input: &mut (impl Read + ?Sized)) -> io::Result<u8> {
    Ok(read_array::<1>(input)?[0])
}

fn read_u32(input: &mut (impl Read + ?Sized)) -> io::Result<u32> {
    Ok(u32::from_le_bytes(read_array(input)?))
}

/// A length-prefixed text of at most `max_bytes`.
fn read_text(input: &mut impl Read, max_bytes: usize) -> anyhow::Result<String> {
    let length = read_u32(input)? as usize;
    if length > max_bytes {
        bail!("the reader sent a message of {length} bytes");
    }
    read_exact_text(input, length)
}

fn read_exact_text(input: &mut (impl Read + ?Sized), length: usize) -> anyhow::Result<String> {
    let mut bytes = vec![0_u8; length];
    input.read_exact(&mut bytes)?;
    String::from_utf8(bytes).map_err(|_| anyhow!("the reader sent text that is not UTF-8"))
}

/// The limits the child runs under, for one file.
#[derive(Debug, Clone, Copy)]
struct Limits {
    memory_bytes: u64,
    cpu_seconds: u64,
}

impl Limits {
    fn for_file(file_bytes: u64) -> Self {
        Self {
            memory_bytes: MEMORY_BASE_BYTES
                .saturating_add(file_bytes.saturating_mul(MEMORY_BYTES_PER_FILE_BYTE)),
            cpu_seconds: CPU_BASE_SECONDS
                .saturating_add((file_bytes >> 20).saturating_mul(CPU_SECONDS_PER_MIB)),
        }
    }
}

/// The running child, killed and waited for when dropped.
struct ReaderChild {
    child: Child,
    stdout: Option<ChildStdout>,
    stderr: Option<JoinHandle<Vec<u8>>>,
    status: Option<ExitStatus>,
}

/// How the child ended, with the start of what it wrote on stderr.
struct Ending {
    status: Option<ExitStatus>,
    stderr: Vec<u8>,
}

impl ReaderChild {
    fn start(
        executable: &Path,
        path: &Path,
        wanted_sheet: Option<&str>,
        limits: Limits,
    ) -> io::Result<Self> {
        let mut command = Command::new(executable);
        command.arg("read-cells");
        if let Some(sheet) = wanted_sheet {
            command.arg("--sheet").arg(sheet);
        }
        command
            .arg("--")
            .arg(path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let parent = std::process::id();
        // SAFETY: the closure runs in the forked child before exec and only makes
        // async-signal-safe system calls (setrlimit, prctl, getppid), allocating nothing.
        unsafe {
            command.pre_exec(move || contain_self(limits, parent));
        }
        let mut child = command.spawn()?;
        let stdout = child.stdout.take();
        let stderr = child.stderr.take().map(|mut stderr| {
            std::thread::spawn(move || {
                let mut kept = Vec::new();
                let mut chunk = [0_u8; 4096];
                // read to the end (so the child never blocks on a full stderr pipe), keep
                // only the start
                while let Ok(count @ 1..) = stderr.read(&mut chunk) {
                    let room = KEPT_STDERR_BYTES.saturating_sub(kept.len());
                    kept.extend_from_slice(&chunk[..count.min(room)]);
                }
                kept
            })
        });
        Ok(Self {
            child,
            stdout,
            stderr,
            status: None,
        })
    }

    /// Waits for the child (killing it first with `kill`: its output is no longer
    /// wanted), and says how it ended.
    fn finish(&mut self, kill: bool) -> Ending {
        if kill {
            // it may have exited already: kill fails harmlessly then, and wait reaps it
            self.child.kill().ok();
        }
        let status = self.child.wait().ok();
        self.status = status;
        let stderr = self
            .stderr
            .take()
            .and_then(|collector| collector.join().ok())
            .unwrap_or_default();
        Ending { status, stderr }
    }
}

impl Drop for ReaderChild {
    fn drop(&mut self) {
        if self.status.is_none() {
            // an early return: the child must not outlive the read
            self.child.kill().ok();
            self.child.wait().ok();
        }
    }
}

/// In the forked child, before exec: the memory and CPU limits, no core file, death with
/// the parent, and the stop signals left to the parent.
fn contain_self(limits: Limits, parent: u32) -> io::Result<()> {
    set_limit(libc::RLIMIT_AS, limits.memory_bytes, limits.memory_bytes)?;
    // the soft limit sends SIGXCPU, the hard one (a little later) SIGKILL
    set_limit(
        libc::RLIMIT_CPU,
        limits.cpu_seconds,
        limits.cpu_seconds.saturating_add(5),
    )?;
    set_limit(libc::RLIMIT_CORE, 0, 0)?;
    // SAFETY: prctl with PR_SET_PDEATHSIG takes a signal number and nothing else.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // the parent may have died before prctl took effect (no allocation here: after fork,
    // only async-signal-safe calls)
    // SAFETY: getppid has no preconditions.
    if unsafe { libc::getppid() } as u32 != parent {
        return Err(io::Error::from_raw_os_error(libc::ESRCH));
    }
    // Ctrl-C and SIGTERM reach the whole process group: the parent handles them (it stops
    // reading, finishes what it read, and kills the child), so they must not kill the
    // child first and look like a broken file
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: signal with SIG_IGN installs no handler code; it is async-signal-safe.
        if unsafe { libc::signal(signal, libc::SIG_IGN) } == libc::SIG_ERR {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Lowers a limit to `soft` and `hard`, never above the limit the process already has (an
/// unprivileged process cannot raise its hard limit, and a lower one the user set stays).
fn set_limit(resource: libc::__rlimit_resource_t, soft: u64, hard: u64) -> io::Result<()> {
    let mut current = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: `current` is a valid rlimit for getrlimit to fill.
    if unsafe { libc::getrlimit(resource, &mut current) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let hard = hard.min(current.rlim_max);
    let limit = libc::rlimit {
        rlim_cur: soft.min(hard).min(current.rlim_cur),
        rlim_max: hard,
    };
    // SAFETY: `limit` is a valid rlimit that outlives the call.
    if unsafe { libc::setrlimit(resource, &limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Why the child stopped without its end frame, as the one error line; `None` when it
/// ended normally (the parent's own decoding error is then the better message).
fn explain_ending(ended: &Ending, limits: &Limits, path: &Path) -> Option<anyhow::Error> {
    let status = ended.status?;
    let file = shown_path(path);
    let stderr = String::from_utf8_lossy(&ended.stderr);
    let memory = format!(
        "the reader may use {} MiB for a file of this size",
        limits.memory_bytes >> 20
    );
    if let Some(claimed) = claimed_allocation(&stderr) {
        return Some(anyhow!(
            "cannot read {file}: the file needs more memory than it can honestly hold (it claims {claimed} bytes at once; {memory})"
        ));
    }
    if stderr.contains("has overflowed its stack") {
        return Some(anyhow!(
            "cannot read {file}: the file nests deeper than the reader can follow (corrupt or hostile?)"
        ));
    }
    match status.signal() {
        Some(libc::SIGXCPU) | Some(libc::SIGKILL) => Some(anyhow!(
            "cannot read {file}: reading it takes longer than its size can explain (stopped after {} s of CPU time; corrupt or hostile?)",
            limits.cpu_seconds
        )),
        Some(libc::SIGABRT) | Some(libc::SIGSEGV) | Some(libc::SIGBUS) => Some(anyhow!(
            "cannot read {file}: the file needs more memory than it can honestly hold ({memory}; corrupt or hostile?)"
        )),
        Some(signal) => Some(anyhow!(
            "cannot read {file}: the reader was stopped by signal {signal} (corrupt or hostile file?)"
        )),
        None if status.success() => None,
        None => {
            let first_line = stderr.lines().next().unwrap_or("no message");
            Some(anyhow!(
                "cannot read {file}: the reader failed (exit {}): {}",
                status.code().unwrap_or(-1),
                shown(first_line)
            ))
        }
    }
}

/// The size of the allocation that failed, from Rust's "memory allocation of N bytes
/// failed" message.
fn claimed_allocation(stderr: &str) -> Option<u64> {
    let rest = &stderr[stderr.find("memory allocation of ")? + "memory allocation of ".len()..];
    rest.split_once(" bytes failed")?.0.trim().parse().ok()
}

/// The child's side (`importer read-cells`): reads the sheet with calamine and writes its
/// cells to stdout as frames; the exit code is 0 when the end frame was written, else 1.
pub fn serve_cells(path: &Path, wanted_sheet: Option<&str>) -> ExitCode {
    // a panic is reported as a frame below; its default message would only be noise
    std::panic::set_hook(Box::new(|_| {}));
    // both callbacks write to the pipe; the first write error stops the reading
    let frames = RefCell::new((
        BufWriter::with_capacity(PIPE_BUFFER_BYTES, io::stdout().lock()),
        None::<io::Error>,
    ));
    let read = catch_unwind(AssertUnwindSafe(|| {
        read_calamine(
            path,
            wanted_sheet,
            &mut |summary| {
                let (output, write_error) = &mut *frames.borrow_mut();
                if let Err(error) = write_start(output, summary) {
                    write_error.get_or_insert(error);
                }
            },
            &mut |position, cell| {
                let (output, write_error) = &mut *frames.borrow_mut();
                match write_cell(output, position, cell) {
                    Ok(()) if write_error.is_none() => ControlFlow::Continue(()),
                    Ok(()) => ControlFlow::Break(()),
                    Err(error) => {
                        write_error.get_or_insert(error);
                        ControlFlow::Break(())
                    }
                }
            },
        )
    }));
    let (mut output, write_error) = frames.into_inner();
    if write_error.is_some() {
        // the parent stopped reading (it has what it needs, or it is gone)
        return ExitCode::FAILURE;
    }
    let (written, complete) = match read {
        Ok(Ok(_)) => (output.write_all(&[FRAME_END]), true),
        Ok(Err(error)) => (write_message(&mut output, &format!("{error:#}")), false),
        Err(panic) => (
            write_message(
                &mut output,
                &format!(
                    "cannot read {}: calamine failed on it (corrupt or truncated?): {}",
                    shown_path(path),
                    shown(&panic_text(panic.as_ref()))
                ),
            ),
            false,
        ),
    };
    match written.and_then(|()| output.flush()) {
        Ok(()) if complete => ExitCode::SUCCESS,
        _ => ExitCode::FAILURE,
    }
}

/// The text a panic was raised with.
fn panic_text(payload: &(dyn Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_string()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "a panic without a message".to_string()
    }
}

fn write_start(output: &mut impl Write, summary: &SheetSummary) -> io::Result<()> {
    output.write_all(&[FRAME_SHEET])?;
    write_text(output, &summary.sheet_name)?;
    if let Some(last_row) = summary.declared_last_row {
        output.write_all(&[FRAME_DECLARED_LAST_ROW])?;
        output.write_all(&last_row.to_le_bytes())?;
    }
    Ok(())
}

fn write_message(output: &mut impl Write, message: &str) -> io::Result<()> {
    output.write_all(&[FRAME_ERROR])?;
    // a message is cut (on a character boundary) to what the parent accepts
    let mut end = message.len().min(MAX_MESSAGE_BYTES);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    write_text(output, &message[..end])
}

fn write_text(output: &mut impl Write, text: &str) -> io::Result<()> {
    // a text past u32 is past any limit: its length is sent saturated, and the parent
    // refuses it from the length alone
    let length = u32::try_from(text.len()).unwrap_or(u32::MAX);
    output.write_all(&length.to_le_bytes())?;
    if text.len() > MAX_CELL_TEXT_BYTES.max(MAX_MESSAGE_BYTES) {
        // the parent stops at the length; the bytes would only fill the pipe
        return Ok(());
    }
    output.write_all(text.as_bytes())
}

fn write_cell(
    output: &mut impl Write,
    (row_index, column_index): (u32, u32),
    cell: CellView<'_>,
) -> io::Result<()> {
    let mut head = [0_u8; 10];
    head[0] = FRAME_CELL;
    head[1..5].copy_from_slice(&row_index.to_le_bytes());
    head[5..9].copy_from_slice(&column_index.to_le_bytes());
    let kind = match cell {
        CellView::Text(_) => KIND_TEXT,
        CellView::Int(_) => KIND_INT,
        CellView::Float(_) => KIND_FLOAT,
        CellView::Bool(_) => KIND_BOOL,
        CellView::DateTime(_) => KIND_DATE_TIME,
        CellView::DateTimeIso(_) => KIND_DATE_TIME_ISO,
        CellView::DurationIso(_) => KIND_DURATION_ISO,
        CellView::Error(_) => KIND_ERROR,
    };
    head[9] = kind;
    output.write_all(&head)?;
    match cell {
        CellView::Text(text) | CellView::DateTimeIso(text) | CellView::DurationIso(text) => {
            write_text(output, text)
        }
        CellView::Int(value) => output.write_all(&value.to_le_bytes()),
        CellView::Float(value) => output.write_all(&value.to_le_bytes()),
        CellView::Bool(value) => output.write_all(&[u8::from(value)]),
        CellView::DateTime(value) => {
            let datetime_type = if value.is_duration() {
                ExcelDateTimeType::TimeDelta
            } else {
                ExcelDateTimeType::DateTime
            };
            // calamine does not say which epoch a date uses; the same value read with the
            // 1900 epoch differs exactly when it uses 1904
            let is_1904 = value != ExcelDateTime::new(value.as_f64(), datetime_type, false);
            let flags = u8::from(value.is_duration()) | (u8::from(is_1904) << 1);
            output.write_all(&value.as_f64().to_le_bytes())?;
            output.write_all(&[flags])
        }
        CellView::Error(error) => output.write_all(&[error_code(error)]),
    }
}

fn error_code(error: &CellErrorType) -> u8 {
    match error {
        CellErrorType::Div0 => 0,
        CellErrorType::NA => 1,
        CellErrorType::Name => 2,
        CellErrorType::Null => 3,
        CellErrorType::Num => 4,
        CellErrorType::Ref => 5,
        CellErrorType::Value => 6,
        CellErrorType::GettingData => 7,
    }
}

fn error_from_code(code: u8) -> CellErrorType {
    match code {
        0 => CellErrorType::Div0,
        1 => CellErrorType::NA,
        2 => CellErrorType::Name,
        3 => CellErrorType::Null,
        4 => CellErrorType::Num,
        5 => CellErrorType::Ref,
        7 => CellErrorType::GettingData,
        _ => CellErrorType::Value,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(cells: &[Data]) -> Vec<Data> {
        let mut bytes = Vec::new();
        write_start(
            &mut bytes,
            &SheetSummary {
                sheet_name: "S\n1".to_string(),
                declared_last_row: Some(7),
            },
        )
        .unwrap();
        for (column_index, cell) in cells.iter().enumerate() {
            let view = CellView::from_data(cell).expect("test cells are not empty");
            write_cell(&mut bytes, (0, column_index as u32), view).unwrap();
        }
        bytes.push(FRAME_END);
        let mut seen = Vec::new();
        let mut visit = |row: super::super::SheetRow| {
            seen.push(row);
            ControlFlow::Continue(())
        };
        let mut rows = RowAssembler::new(0, &mut visit);
        let received = receive(&mut bytes.as_slice(), &mut rows).unwrap();
        rows.finish().unwrap();
        match received {
            Received::Finished(summary) => {
                assert_eq!(summary.sheet_name, "S\n1");
                assert_eq!(summary.declared_last_row, Some(7));
            }
            _ => panic!("the end frame was sent"),
        }
        seen.into_iter().flat_map(|row| row.cells).collect()
    }

    #[test]
    fn every_cell_kind_survives_the_pipe() {
        let cells = vec![
            Data::String("Zürich\n✓".to_string()),
            Data::Int(-(1 << 62)),
            Data::Float(-0.5),
            Data::Bool(true),
            Data::DateTime(ExcelDateTime::new(
                45351.5,
                ExcelDateTimeType::DateTime,
                false,
            )),
            Data::DateTime(ExcelDateTime::new(
                100.25,
                ExcelDateTimeType::DateTime,
                true,
            )),
            Data::DateTime(ExcelDateTime::new(1.5, ExcelDateTimeType::TimeDelta, false)),
            Data::DateTimeIso("2024-02-29T13:45:30".to_string()),
            Data::DurationIso("PT1H".to_string()),
            Data::Error(CellErrorType::Div0),
            Data::Error(CellErrorType::NA),
        ];
        assert_eq!(round_trip(&cells), cells);
    }

    #[test]
    fn a_text_frame_past_the_cell_limit_is_refused_by_its_length() {
        let mut bytes = vec![FRAME_CELL];
        bytes.extend_from_slice(&2_u32.to_le_bytes());
        bytes.extend_from_slice(&1_u32.to_le_bytes());
        bytes.push(KIND_TEXT);
        bytes.extend_from_slice(&u32::MAX.to_le_bytes());
        // no payload follows: the length alone is refused, nothing is allocated
        let mut visit = |_| ControlFlow::Continue(());
        let mut rows = RowAssembler::new(0, &mut visit);
        let error = match receive(&mut bytes.as_slice(), &mut rows) {
            Err(error) => format!("{error:#}"),
            Ok(_) => panic!("an oversized cell was accepted"),
        };
        assert!(
            error.starts_with("cell B3 holds 4294967295 bytes of text"),
            "{error}"
        );
    }

    #[test]
    fn the_claimed_allocation_is_read_from_rusts_message() {
        assert_eq!(
            claimed_allocation("memory allocation of 433705652977760 bytes failed\n"),
            Some(433_705_652_977_760)
        );
        assert_eq!(claimed_allocation("thread panicked"), None);
    }

    #[test]
    fn limits_grow_with_the_file() {
        let small = Limits::for_file(1_770);
        assert_eq!(small.memory_bytes, (2 << 30) + 32 * 1_770);
        assert_eq!(small.cpu_seconds, 10);
        let large = Limits::for_file(100 << 20);
        assert_eq!(large.cpu_seconds, 410);
    }
}
