//! `dmls-relay`: runs the relay until SIGTERM or Ctrl-C, then shuts down gracefully.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser as _;
use dmls_relay::Config;
use dmls_relay::LogFormat;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    init_tracing(config.log_format);
    match run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Logs may go to a collector; the operator starting the relay by hand reads stderr.
            tracing::error!(error = format!("{e:#}"), "dmls-relay failed");
            eprintln!("dmls-relay: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config) -> anyhow::Result<()> {
    // `Config`'s Debug redacts the registration token and database password.
    tracing::info!(version = env!("CARGO_PKG_VERSION"), config = ?config, "starting");
    if let Some(open_files) = raise_open_files_limit()
        && config.max_connections > 0
        && u64::try_from(config.max_connections).unwrap_or(u64::MAX) >= open_files
    {
        tracing::warn!(
            max_connections = config.max_connections,
            open_files,
            "--max-connections is not below the open-files limit: the relay may run out of file descriptors before it refuses connections"
        );
    }
    let relay = dmls_relay::start(config).await?;
    tracing::info!(url = %relay.url(), "ready");
    let signal = shutdown_signal().await;
    tracing::info!("{signal}: shutting down");
    relay.shutdown().await
}

/// Every connection holds a file descriptor: raises the soft limit on open files to the hard
/// limit, and logs both, so `--max-connections` rather than the descriptor limit bounds a busy
/// relay. Returns the soft limit in force, if known.
#[cfg(unix)]
fn raise_open_files_limit() -> Option<u64> {
    let (soft, hard) = match rlimit::getrlimit(rlimit::Resource::NOFILE) {
        Ok(limits) => limits,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the open-files limit");
            return None;
        }
    };
    match rlimit::increase_nofile_limit(hard) {
        Ok(raised) => {
            tracing::info!(
                soft_before = soft,
                soft = raised,
                hard,
                "open-files limit (RLIMIT_NOFILE)"
            );
            Some(raised)
        }
        Err(e) => {
            tracing::warn!(
                error = %e,
                soft,
                hard,
                "cannot raise the open-files soft limit to the hard limit"
            );
            Some(soft)
        }
    }
}

#[cfg(not(unix))]
fn raise_open_files_limit() -> Option<u64> {
    None
}

/// Level from `RUST_LOG` (default `info`), text or JSON lines on stdout.
fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let installed = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    if let Err(e) = installed {
        eprintln!("dmls-relay: cannot set up logging: {e}");
    }
}

/// Resolves on Ctrl-C or (on Unix) SIGTERM, naming which; on an error setting them up, logs it
/// and waits for the other.
async fn shutdown_signal() -> &'static str {
    let ctrl_c = async {
        match tokio::signal::ctrl_c()
            .await
            .context("cannot listen for Ctrl-C")
        {
            Ok(()) => "Ctrl-C",
            Err(e) => {
                tracing::warn!(error = format!("{e:#}"));
                std::future::pending().await
            }
        }
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()).context("cannot listen for SIGTERM") {
            Ok(mut sigterm) => {
                sigterm.recv().await;
                "SIGTERM"
            }
            Err(e) => {
                tracing::warn!(error = format!("{e:#}"));
                std::future::pending().await
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<&'static str>();
    tokio::select! {
        name = ctrl_c => name,
        name = terminate => name,
    }
}
