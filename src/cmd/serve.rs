//! `importer serve`: flags -> [`ServeConfig`], the token from the environment or a file, the
//! signals that stop it; the service itself is `crate::serve`.

use std::time::Duration;

use anyhow::{Context, bail};

use super::Outcome;
use crate::cli::ServeArgs;
use crate::import::ImportOptions;
use crate::serve::{self, Retention, ServeConfig};

/// The environment variable that holds the bearer token.
const TOKEN_VARIABLE: &str = "IMPORTER_TOKEN";

/// Runs the service until SIGTERM or Ctrl-C, then shuts it down cleanly (exit 0); a second
/// signal during the shutdown ends it at once (exit 1).
pub async fn run(args: ServeArgs) -> anyhow::Result<Outcome> {
    let config = config_of(&args)?;
    let mut signals = super::SignalListener::install()?;
    let (first_signal, shutdown) = tokio::sync::oneshot::channel::<()>();
    let service = serve::run(config, async move {
        // a dropped sender (cannot happen before a signal) also shuts down
        let _either = shutdown.await;
    });
    let second_signal = async {
        let signal = signals.recv().await;
        tracing::info!(signal = signal.name(), "signal received");
        // the service is waiting on the receiver, which lives as long as it does
        let _sent = first_signal.send(());
        signals.recv().await
    };
    tokio::select! {
        served = service => served?,
        signal = second_signal => bail!(
            "stopped by a second signal ({}) without waiting for the running imports (the next run on their table records them died)",
            signal.name()
        ),
    }
    Ok(Outcome::AllIn)
}

fn config_of(args: &ServeArgs) -> anyhow::Result<ServeConfig> {
    let allowed_tables = match (&args.allow_tables[..], &args.table) {
        ([], Some(table)) => vec![table.clone()],
        // the parser refuses this as a usage error; ServeArgs built in code gets it here
        ([], None) => bail!(
            "serve needs --table (the table uploads go to) or --allow-table PATTERN (the tables a request may name with ?table=)"
        ),
        (patterns, _) => patterns.to_vec(),
    };
    let mut defaults = ImportOptions::new(std::path::PathBuf::new(), String::new());
    defaults.database_url = args.database_url.clone();
    defaults.table = args.table.clone();
    defaults.method = args.method.into();
    defaults.mode = args.mode.into();
    defaults.workers = args.workers;
    defaults.batch_size = args.batch_size;
    defaults.header_row = args.header_row;
    defaults.max_errors = args.max_errors;
    defaults.wait_lock = Some(Duration::from_secs(args.wait_lock));
    defaults.create_table = !args.no_create;
    defaults.connect_timeout = Duration::from_secs(args.connect_timeout);
    defaults.xlsx_reader = args.xlsx_reader;
    defaults.ledger_schema = Some(args.ledger.ledger_schema.clone());
    defaults.kept_rejections = crate::serve::REJECTS_SHOWN;
    Ok(ServeConfig {
        listen: args.listen,
        uploads: args.uploads.clone(),
        max_upload_bytes: args.max_upload_mb * 1024 * 1024,
        max_concurrent_imports: args.max_concurrent_imports as usize,
        allowed_tables,
        default_table: args.table.clone(),
        token: read_token(args)?,
        shutdown_grace: Duration::from_secs(args.shutdown_grace),
        request_timeout: Duration::from_secs(args.request_timeout),
        retention: Retention {
            // the file of the import that just ended is always kept: its response links it
            count: args.keep_rejects.max(1),
            age: Duration::from_secs(args.keep_rejects_hours * 3600),
        },
        defaults,
        ledger_schema: args.ledger.ledger_schema.clone(),
    })
}

/// The token of --token-file (its first line), else of IMPORTER_TOKEN; never logged.
fn read_token(args: &ServeArgs) -> anyhow::Result<Option<String>> {
    let token = match &args.token_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the token file {}", path.display()))?;
            let line = text.lines().next().unwrap_or_default().trim().to_string();
            if line.is_empty() {
                bail!("the token file {} is empty", path.display());
            }
            Some(line)
        }
        None => match std::env::var(TOKEN_VARIABLE) {
            Ok(text) if !text.trim().is_empty() => Some(text.trim().to_string()),
            Ok(_) => bail!("{TOKEN_VARIABLE} is set but empty; set a token or unset it"),
            Err(std::env::VarError::NotPresent) => None,
            Err(std::env::VarError::NotUnicode(_)) => bail!("{TOKEN_VARIABLE} is not valid UTF-8"),
        },
    };
    Ok(token)
}
