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

/// Writes the manual page, in roff, on stdout: the program's page, then the synopsis,
/// description and options of each subcommand, so one page holds every flag.
pub fn man_page() -> anyhow::Result<Outcome> {
    let command = Cli::command();
    let mut page = Vec::new();
    let context = || "cannot render the manual page";
    clap_mangen::Man::new(command.clone())
        .render(&mut page)
        .with_context(context)?;
    for subcommand in command.get_subcommands() {
        let name = format!("importer {}", subcommand.get_name());
        let man = clap_mangen::Man::new(subcommand.clone().bin_name(name));
        man.render_synopsis_section(&mut page)
            .and_then(|()| man.render_description_section(&mut page))
            .and_then(|()| man.render_options_section(&mut page))
            .with_context(context)?;
    }
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
