//! `importer completions SHELL` and `importer man`: the command line described for shells
//! (clap_complete) and for `man` (clap_mangen), from the same clap definitions as the
//! parser, so they never drift from the flags. Both write to stdout, which is their output
//! as the stats are `run`'s.

use std::io::Write;

use anyhow::Context;
use clap::CommandFactory;

use super::Outcome;
use crate::cli::Cli;

/// Writes the completion script for `shell` on stdout.
pub fn completions(shell: clap_complete::Shell) -> anyhow::Result<Outcome> {
    let mut command = Cli::command();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command, "importer", &mut script);
    write_stdout(&script)?;
    Ok(Outcome::AllIn)
}

/// Writes the manual page, in roff, on stdout.
pub fn man_page() -> anyhow::Result<Outcome> {
    let mut page = Vec::new();
    clap_mangen::Man::new(Cli::command())
        .render(&mut page)
        .context("cannot render the manual page")?;
    write_stdout(&page)?;
    Ok(Outcome::AllIn)
}

fn write_stdout(bytes: &[u8]) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(bytes)
        .and_then(|()| stdout.flush())
        .context("cannot write to stdout")
}
