//! Helpers shared by the end-to-end test binaries: a relay in the process, syncing clients
//! until things propagate, and running the `dmls` binary.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod key_substituting_relay;

use std::path::Path;
use std::process::{Command, Output};

use dmls_client::client::Client;
use dmls_client::engine::Event;

/// A relay on 127.0.0.1 over a SQLite file in `dir`.
pub async fn start_relay(dir: &Path) -> dmls_relay::RunningRelay {
    dmls_relay::testing::start_sqlite_relay(dir)
        .await
        .expect("relay starts")
}

/// Everyone syncs, `rounds` times, so that welcomes, joins and commits propagate; returns
/// each one's events.
pub async fn settle(clients: &mut [&mut Client], rounds: usize) -> Vec<Vec<Event>> {
    let mut events = vec![Vec::new(); clients.len()];
    for _ in 0..rounds {
        for (i, c) in clients.iter_mut().enumerate() {
            let r = c
                .sync_once()
                .await
                .unwrap_or_else(|e| panic!("{} sync: {e}", c.client_id()));
            events[i].extend(r.events);
        }
    }
    events
}

/// The `dmls` binary with `--home home` (and no DMLS_HOME from the environment).
pub fn dmls(home: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_dmls"));
    c.arg("--home")
        .arg(home)
        .env_remove("DMLS_HOME")
        .env("RUST_LOG", "warn");
    c
}

/// Runs `dmls` off the async runtime (the relay runs on it) and returns its output.
pub async fn run(home: &Path, args: &[&str]) -> Output {
    run_command(dmls(home), args).await
}

/// Runs `command` with `args` off the async runtime.
pub async fn run_command(mut command: Command, args: &[&str]) -> Output {
    command.args(args);
    tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap()
}
