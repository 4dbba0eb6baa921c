//! `importer serve`: flags -> [`ServeConfig`], the token from the environment or a file, the
//! signals that stop it; the service itself is `crate::serve`.

use std::io;
use std::time::Duration;

use anyhow::{Context, bail};
use tracing::{info, warn};

use super::Outcome;
use crate::cli::ServeArgs;
use crate::import::ImportOptions;
use crate::serve::{self, ConnectionLimits, REFUSALS_AT_ONCE, Retention, ServeConfig};

/// The environment variable that holds the bearer token.
const TOKEN_VARIABLE: &str = "IMPORTER_TOKEN";

/// Open files the service keeps beside its connections and imports: the standard streams,
/// the listener, the runtime's, its own pool's, the rejects files being pruned.
const FILES_RESERVED: u64 = 64;

/// Open files one import holds beside its worker connections: its pool's extra connection,
/// its run lock's, the upload, its rejects file, the reader's files and the contained
/// reader's pipes.
const FILES_PER_IMPORT: u64 = 12;

/// Fewest connections worth serving: an open-file limit that leaves fewer is an error.
const FEWEST_CONNECTIONS: u64 = 16;

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
        connections: connection_limits(args)?,
        retention: Retention {
            // the file of the import that just ended is always kept: its response links it
            count: args.keep_rejects.max(1),
            age: Duration::from_secs(args.keep_rejects_hours * 3600),
        },
        defaults,
        ledger_schema: args.ledger.ledger_schema.clone(),
    })
}

/// `--header-timeout`, and `--max-connections` lowered to what the open-file limit leaves
/// once the imports have theirs (the soft limit raised to the hard one first).
fn connection_limits(args: &ServeArgs) -> anyhow::Result<ConnectionLimits> {
    let open_files = raise_open_file_limit()?;
    let workers = args
        .workers
        .map_or_else(crate::import::prepare::available_cores, usize::from) as u64;
    let reserved = FILES_RESERVED
        + REFUSALS_AT_ONCE as u64
        + u64::from(args.max_concurrent_imports) * (workers + FILES_PER_IMPORT);
    let room = open_files.saturating_sub(reserved);
    if room < FEWEST_CONNECTIONS {
        bail!(
            "the open-file limit of {open_files} leaves room for {room} connections beside {} imports of {workers} workers; raise it (ulimit -n, or LimitNOFILE= for systemd) or lower --max-concurrent-imports",
            args.max_concurrent_imports
        );
    }
    let max_connections = u64::from(args.max_connections).min(room);
    if max_connections < u64::from(args.max_connections) {
        info!(
            max_connections,
            open_file_limit = open_files,
            "--max-connections lowered to what the open-file limit leaves"
        );
    }
    Ok(ConnectionLimits {
        header_timeout: Duration::from_secs(args.header_timeout),
        max_connections: usize::try_from(max_connections)
            .expect("at most --max-connections, a u32"),
    })
}

/// Raises the soft open-file limit to the hard one (every connection holds a descriptor)
/// and returns the soft limit in force.
fn raise_open_file_limit() -> anyhow::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid rlimit for getrlimit to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error()).context("cannot read the open-file limit");
    }
    if limit.rlim_cur >= limit.rlim_max {
        return Ok(limit.rlim_cur);
    }
    let raised = libc::rlimit {
        rlim_cur: limit.rlim_max,
        rlim_max: limit.rlim_max,
    };
    // SAFETY: `raised` is a valid rlimit that outlives the call.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
        // a hard limit of "unlimited" is more than the kernel takes (fs.nr_open)
        warn!(error = %io::Error::last_os_error(), soft = limit.rlim_cur, hard = limit.rlim_max, "cannot raise the open-file limit to the hard one; serving within the soft one");
        return Ok(limit.rlim_cur);
    }
    Ok(limit.rlim_max)
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
