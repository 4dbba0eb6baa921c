//! `importer history`: lists past runs from the run ledger.

use super::Outcome;
use crate::cli::HistoryArgs;

/// Runs `importer history`.
pub async fn run(args: HistoryArgs) -> anyhow::Result<Outcome> {
    anyhow::bail!("importer history is not available yet (table filter: {:?})", args.table)
}
