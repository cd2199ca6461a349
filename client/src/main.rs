//! `dmls`: the command-line client of Distributed MLS. See `dmls --help`.

use std::process::ExitCode;

use clap::Parser as _;
use dmls_client::cli::{Cli, Command, error_text, run};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Logs go to stderr, quiet unless RUST_LOG asks; they never contain tokens or keys. The
    // chat draws on the terminal that stderr usually is too: there it shows problems itself
    // and logs nothing unless RUST_LOG asks (then redirect stderr, e.g. `2>chat.log`).
    let default_filter = match cli.command {
        Command::Chat { .. } => "off",
        _ => "warn",
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter)),
        )
        .init();
    let json = cli.json;
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let text = error_text(&e);
            if json {
                println!("{}", serde_json::json!({ "error": text }));
            }
            eprintln!("error: {text}");
            ExitCode::FAILURE
        }
    }
}
