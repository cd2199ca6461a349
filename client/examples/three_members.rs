//! Three members create a DGroup through a relay and talk.
//!
//! ```text
//! cargo run -p dmls-client --example three_members -- --relay http://127.0.0.1:8080
//! cargo run -p dmls-client --example three_members      # starts a relay in this process
//! ```
//! Each member has its own state directory in a temporary folder, as three devices would.

use anyhow::{Context as _, Result};
use clap::Parser;
use dmls_client::client::Client;
use dmls_client::engine::Event;

/// Three members create a DGroup through a relay and exchange messages.
#[derive(Parser)]
struct Args {
    /// Relay to use; without it a relay is started in this process on 127.0.0.1.
    #[arg(long)]
    relay: Option<String>,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let dir = tempfile::tempdir().context("cannot make a temporary directory")?;
    let (url, local) = match args.relay {
        Some(url) => (url, None),
        None => {
            let db = format!("sqlite://{}", dir.path().join("relay.db").display());
            let config = dmls_relay::Config::parse_from([
                "dmls-relay",
                "--bind",
                "127.0.0.1:0",
                "--database-url",
                &db,
            ]);
            let relay = dmls_relay::start(config)
                .await
                .context("cannot start a relay")?;
            println!("started a relay at {}", relay.url());
            (relay.url(), Some(relay))
        }
    };

    // Names must be unique on the relay: add a random suffix so the example can run again.
    let suffix: u32 = rand::random::<u32>() % 100_000;
    let names = ["alice", "bob", "carol"].map(|n| format!("{n}-{suffix}"));
    let mut members = Vec::new();
    for name in &names {
        let c = Client::init(&dir.path().join(name), &url, name)
            .await
            .with_context(|| format!("cannot create {name}"))?;
        println!("{name}: registered, key packages uploaded");
        members.push(c);
    }

    let others = vec![names[1].clone(), names[2].clone()];
    let id = members[0].create_group("example", &others).await?;
    println!("{}: created DGroup \"example\" ({})", names[0], id.to_hex());

    // Everyone syncs a few times: Bob and Carol receive Alice's Welcome, create their own
    // Send Groups and send Welcomes in turn.
    for _ in 0..3 {
        sync_all(&mut members).await?;
    }

    for (i, c) in members.iter_mut().enumerate() {
        let text = format!("hello from {}", names[i]);
        c.send_text("example", &text).await?;
        println!("{}: sent {text:?}", names[i]);
    }
    sync_all(&mut members).await?;

    members[0].update("example").await?;
    println!("{}: made a DMLS Update", names[0]);
    members[1].send_text("example", "I see your update").await?;
    println!(
        "{}: sent a message (its commit imports the update first)",
        names[1]
    );
    sync_all(&mut members).await?;

    for c in &members {
        let status = c.status("example").await?;
        let epochs: Vec<String> = status
            .send_groups
            .iter()
            .map(|g| {
                format!(
                    "{}@{}",
                    g.owner,
                    g.epoch.map_or("-".into(), |e| e.to_string())
                )
            })
            .collect();
        println!(
            "{} sees Send Group epochs {}",
            c.client_id(),
            epochs.join(" ")
        );
        for m in c.log("example", 100).await? {
            println!("    {}: {}", m.sender, String::from_utf8_lossy(&m.body));
        }
    }
    if let Some(relay) = local {
        relay.shutdown().await?;
    }
    Ok(())
}

async fn sync_all(members: &mut [Client]) -> Result<()> {
    for c in members.iter_mut() {
        let report = c.sync_once().await?;
        for e in &report.events {
            match e {
                Event::JoinedDGroup { name, .. } => println!("{}: joined {name}", c.client_id()),
                Event::JoinedSendGroup { owner, epoch, .. } => {
                    println!(
                        "{}: joined {owner}'s Send Group at epoch {epoch}",
                        c.client_id()
                    )
                }
                Event::Message(m) => println!(
                    "{}: received from {}: {}",
                    c.client_id(),
                    m.sender,
                    String::from_utf8_lossy(&m.body)
                ),
                _ => {}
            }
        }
    }
    Ok(())
}
