//! Key packages through a real relay in this process (SQLite, 127.0.0.1): last-resort key
//! packages end to end, and a large DGroup formed in one pass with the default stock, through
//! the facade and through the `dmls` binary.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::path::Path;
use std::process::Command;

use dmls_client::client::Client;
use dmls_client::engine::Event;
use serde_json::Value;

async fn start_relay(dir: &Path) -> dmls_relay::RunningRelay {
    dmls_relay::testing::start_sqlite_relay(dir)
        .await
        .expect("relay starts")
}

/// Claims key packages of `whom` (as `by`) until the relay answers with the last-resort one,
/// which it returns; the stock is empty then.
async fn drain_stock(by: &Client, whom: &str) -> Vec<u8> {
    for _ in 0..1_000 {
        let claimed = by
            .relay()
            .claim_key_packages(&[whom.to_string()])
            .await
            .unwrap();
        let kp = claimed.key_packages.into_iter().next().expect("a package");
        if kp.last_resort {
            return kp.key_package.into_inner();
        }
    }
    panic!("the stock of {whom} did not run out");
}

/// Events that say a member could not be added: none are expected here.
fn assert_everyone_added(who: &str, events: &[Event]) {
    for e in events {
        assert!(
            !matches!(
                e,
                Event::KeyPackagesMissing { .. }
                    | Event::KeyPackageRejected { .. }
                    | Event::Ignored { .. }
            ),
            "{who}: {e:?}"
        );
    }
}

async fn texts(c: &Client, group: &str) -> HashSet<(String, String)> {
    c.log(group, 10_000)
        .await
        .unwrap()
        .into_iter()
        .map(|m| (m.sender, String::from_utf8_lossy(&m.body).into_owned()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_stock_is_served_by_the_last_resort_package_and_that_leaf_is_refreshed() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start_relay(dir.path()).await;
    let url = relay.url();
    let mut clients = Vec::new();
    for name in ["alice", "bob", "carol", "xavier"] {
        clients.push(
            Client::init(&dir.path().join(name), &url, name)
                .await
                .unwrap(),
        );
    }
    let [mut a, mut b, mut c, mut x]: [Client; 4] = clients.try_into().ok().unwrap();
    // xavier's stock runs out while he is offline: every claim gets his last resort.
    let first_last_resort = drain_stock(&a, "xavier").await;
    assert_eq!(a.relay().me().await.unwrap().key_packages_available, 64);

    a.create_group("lr", &["bob".into(), "carol".into(), "xavier".into()])
        .await
        .unwrap();
    let mut created = a.sync_once().await.unwrap().events;
    created.extend(a.take_events());
    assert_everyone_added("alice", &created);
    // bob and carol join alice's Send Group and add xavier to theirs, through the same
    // last-resort package.
    for y in [&mut b, &mut c] {
        let r = y.sync_once().await.unwrap();
        assert_everyone_added(y.client_id(), &r.events);
    }
    let r = x.sync_once().await.unwrap();
    assert_everyone_added("xavier", &r.events);
    let s = x.status("lr").await.unwrap();
    for owner in ["alice", "bob", "carol"] {
        let sg = s.send_groups.iter().find(|g| g.owner == owner).unwrap();
        assert!(
            sg.joined,
            "xavier did not join {owner}'s Send Group: {sg:?}"
        );
        assert_eq!(sg.members.len(), 4, "{sg:?}");
        assert!(sg.last_resort_leaf, "{owner}: {sg:?}");
    }
    // The used last-resort package was replaced on the relay (and the stock topped up).
    assert!(
        !x.with_engine(|e| e.needs_last_resort(dmls_client::client::now_ms()))
            .await
            .unwrap()
    );
    let second_last_resort = drain_stock(&a, "xavier").await;
    assert_ne!(first_last_resort, second_last_resort);

    // The owners commit xavier's leaf refreshes before their next messages.
    for y in [&mut a, &mut b, &mut c, &mut x] {
        y.sync_once().await.unwrap();
    }
    for y in [&mut a, &mut b, &mut c, &mut x] {
        let who = y.client_id().to_string();
        y.send_text("lr", &format!("hello from {who}"))
            .await
            .unwrap();
    }
    for _ in 0..2 {
        for y in [&mut a, &mut b, &mut c, &mut x] {
            let r = y.sync_once().await.unwrap();
            assert_everyone_added(y.client_id(), &r.events);
        }
    }
    let s = x.status("lr").await.unwrap();
    for sg in s.send_groups.iter().filter(|g| g.owner != "xavier") {
        assert!(!sg.last_resort_leaf, "not refreshed: {sg:?}");
    }
    for y in [&a, &b, &c, &x] {
        let got = texts(y, "lr").await;
        for who in ["alice", "bob", "carol", "xavier"] {
            assert!(
                got.contains(&(who.to_string(), format!("hello from {who}"))),
                "{} misses {who}'s message: {got:?}",
                y.client_id()
            );
        }
    }
    relay.shutdown().await.unwrap();
}

/// The names of a DGroup of `n` members.
fn names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("u{i:02}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dgroup_of_32_forms_in_one_pass_of_syncs_with_the_default_stock() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start_relay(dir.path()).await;
    let url = relay.url();
    let names = names(32);
    let mut clients = Vec::new();
    for n in &names {
        clients.push(Client::init(&dir.path().join(n), &url, n).await.unwrap());
    }
    clients[0].create_group("big", &names[1..]).await.unwrap();
    let pending = clients[0].take_events();
    assert_everyone_added("u00", &pending);
    // One sync each, in turn: everyone adds everyone.
    for c in clients.iter_mut() {
        let r = c.sync_once().await.unwrap();
        assert_everyone_added(c.client_id(), &r.events);
    }
    for c in clients.iter_mut() {
        let own = c.client_id().to_string();
        c.send_text("big", &format!("hello from {own}"))
            .await
            .unwrap();
    }
    for c in clients.iter_mut() {
        let r = c.sync_once().await.unwrap();
        assert_everyone_added(c.client_id(), &r.events);
    }
    for c in &clients {
        let s = c.status("big").await.unwrap();
        for sg in &s.send_groups {
            assert!(sg.joined, "{} has not joined {}", c.client_id(), sg.owner);
            assert_eq!(sg.members.len(), 32, "{}: {}", c.client_id(), sg.owner);
        }
        let got = texts(c, "big").await;
        for n in &names {
            assert!(
                got.contains(&(n.clone(), format!("hello from {n}"))),
                "{} misses {n}'s message ({} of 32)",
                c.client_id(),
                got.len()
            );
        }
    }
    relay.shutdown().await.unwrap();
}

fn dmls(home: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_dmls"));
    c.arg("--home")
        .arg(home)
        .arg("--json")
        .args(args)
        .env_remove("DMLS_HOME")
        .env("RUST_LOG", "warn");
    c
}

/// Runs `dmls` off the async runtime (the relay runs on it) and parses its JSON document, or
/// panics with its stderr.
async fn ok(home: &Path, args: &[&str]) -> Value {
    let mut cmd = dmls(home, args);
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "dmls {args:?} failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("dmls {args:?}: not one JSON document ({e}): {stdout}"))
}

/// No JSON event of `out` says that a member could not be added.
fn assert_no_missing(who: &str, out: &Value) {
    let text = out.to_string();
    for bad in [
        "key_packages_missing",
        "key_package_rejected",
        "\"ignored\"",
    ] {
        assert!(!text.contains(bad), "{who}: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dgroup_of_32_forms_in_one_pass_through_the_dmls_binary() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start_relay(dir.path()).await;
    let url = relay.url();
    let names = names(32);
    let home = |n: &str| dir.path().join(n);
    for n in &names {
        ok(&home(n), &["init", "--relay", &url, "--name", n]).await;
    }
    let mut create = vec!["group", "create", "big"];
    create.extend(names[1..].iter().map(String::as_str));
    let out = ok(&home("u00"), &create).await;
    assert_no_missing("u00", &out);
    for n in &names {
        let out = ok(&home(n), &["sync"]).await;
        assert_no_missing(n, &out);
    }
    for n in &names {
        ok(&home(n), &["send", "big", &format!("hello from {n}")]).await;
    }
    for n in &names {
        let out = ok(&home(n), &["sync"]).await;
        assert_no_missing(n, &out);
    }
    for n in &names {
        let log = ok(&home(n), &["log", "big"]).await;
        let text = log.to_string();
        for m in &names {
            assert!(
                text.contains(&format!("hello from {m}")),
                "{n} misses {m}'s message: {text}"
            );
        }
    }
    relay.shutdown().await.unwrap();
}
