//! Standard input as a source (`-`, `/dev/stdin`, `/dev/fd/0`): CSV, spooled to a private
//! temporary file first, because a run reads its input several times (the header, type
//! inference, the ledger's SHA-256, upsert's key pass) and a pipe can be read only once.
//!
//! The spool is created with mode 0600 and a random name. Where `/proc/self/fd` exists
//! (Linux) its name is removed right after it is created and the file is read through its
//! open descriptor, so nothing is left behind whatever ends the process, SIGKILL
//! included; elsewhere the file is removed when the spool is dropped.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context;

/// Whether `path` names standard input.
pub fn is_stdin(path: &Path) -> bool {
    matches!(
        path.to_str(),
        Some("-" | "/dev/stdin" | "/dev/fd/0" | "/proc/self/fd/0")
    )
}

/// The name the stats and the ledger give the input: `stdin` for standard input, else the
/// file's name without its directory.
pub fn input_name(path: &Path) -> String {
    if is_stdin(path) {
        return "stdin".to_string();
    }
    path.file_name().map_or_else(
        || path.display().to_string(),
        |name| name.to_string_lossy().into_owned(),
    )
}

/// A private copy of standard input, gone once dropped.
#[derive(Debug)]
pub struct StdinSpool {
    /// Where the copy is read from.
    path: PathBuf,
    /// The copy; its descriptor is what `/proc/self/fd/N` names.
    file: File,
    /// The named file to remove on drop (when it could not be removed at once).
    named: Option<PathBuf>,
}

impl StdinSpool {
    /// Copies all of standard input into a new private temporary file. Blocking.
    pub fn create() -> anyhow::Result<Self> {
        let named = std::env::temp_dir().join(format!(
            "importer-stdin-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&named)
            .with_context(|| {
                format!(
                    "cannot create a temporary file for standard input in {}",
                    std::env::temp_dir().display()
                )
            })?;
        let through_descriptor = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
        let (path, named) = if through_descriptor.exists() && std::fs::remove_file(&named).is_ok() {
            (through_descriptor, None)
        } else {
            (named.clone(), Some(named))
        };
        // from here on, dropping the spool (an error below included) cleans up
        let spool = StdinSpool { path, file, named };
        let mut writer = &spool.file;
        std::io::copy(&mut std::io::stdin().lock(), &mut writer)
            .and_then(|_| writer.flush())
            .context("cannot read standard input")?;
        Ok(spool)
    }

    /// The path the copy is read through.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for StdinSpool {
    fn drop(&mut self) {
        if let Some(named) = &self.named {
            // best effort: the temporary directory is the system's to clean otherwise
            std::fs::remove_file(named).ok();
        }
    }
}
