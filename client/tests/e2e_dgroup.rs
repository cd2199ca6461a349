//! End-to-end: three identities, each with its own file-backed state, talk through a real relay
//! in this process (SQLite, 127.0.0.1:0) using the client facade.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::path::Path;

use clap::Parser as _;
use dmls_client::client::{Client, now_ms};
use dmls_client::engine::{DGroupStatus, EngineError, Event, Input, TEXT_PLAIN};

mod support;

use support::{settle, start_relay};

async fn trio(dir: &Path, url: &str) -> (Client, Client, Client) {
    let mut a = Client::init(&dir.join("alice"), url, "alice")
        .await
        .unwrap();
    let mut b = Client::init(&dir.join("bob"), url, "bob").await.unwrap();
    let mut c = Client::init(&dir.join("carol"), url, "carol")
        .await
        .unwrap();
    a.create_group("trio", &["bob".to_string(), "carol".to_string()])
        .await
        .unwrap();
    settle(&mut [&mut a, &mut b, &mut c], 3).await;
    for x in [&a, &b, &c] {
        let s = x.status("trio").await.unwrap();
        for sg in &s.send_groups {
            assert!(
                sg.joined,
                "{} has not joined {}'s Send Group: {s:?}",
                x.client_id(),
                sg.owner
            );
            assert_eq!(sg.members.len(), 3, "{}: {:?}", x.client_id(), sg);
        }
    }
    (a, b, c)
}

/// `member` is in no Send Group of the others in `s` (the status of member `at`).
fn assert_not_in_others_send_groups(s: &DGroupStatus, at: &str, member: &str) {
    for sg in s.send_groups.iter().filter(|g| g.owner != member) {
        assert!(
            !sg.members.iter().any(|m| m == member),
            "{at} still sees {member} in {}'s Send Group",
            sg.owner
        );
    }
}

async fn texts(c: &Client, group: &str) -> Vec<(String, String)> {
    c.log(group, 10_000)
        .await
        .unwrap()
        .into_iter()
        .map(|m| (m.sender, String::from_utf8_lossy(&m.body).into_owned()))
        .collect()
}

/// When `owner` fell behind, in `x`'s view of the DGroup "trio".
async fn behind(x: &Client, owner: &str) -> Option<u64> {
    x.status("trio")
        .await
        .unwrap()
        .send_groups
        .into_iter()
        .find(|g| g.owner == owner)
        .unwrap()
        .behind_since_ms
}

async fn epoch_of(c: &Client, group: &str, owner: &str) -> u64 {
    let s = c.status(group).await.unwrap();
    s.send_groups
        .iter()
        .find(|g| g.owner == owner)
        .and_then(|g| g.epoch)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_join_and_read_everything_the_others_send() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start_relay(dir.path()).await;
    let (mut a, mut b, mut c) = trio(dir.path(), &relay.url()).await;

    a.send_text("trio", "hello from alice").await.unwrap();
    b.send_text("trio", "hello from bob").await.unwrap();
    c.send_text("trio", "hello from carol").await.unwrap();
    settle(&mut [&mut a, &mut b, &mut c], 2).await;

    for x in [&a, &b, &c] {
        let got: HashSet<(String, String)> = texts(x, "trio").await.into_iter().collect();
        for who in ["alice", "bob", "carol"] {
            assert!(
                got.contains(&(who.to_string(), format!("hello from {who}"))),
                "{} misses {who}'s message: {got:?}",
                x.client_id()
            );
        }
        assert_eq!(texts(x, "trio").await.len(), 3, "{}", x.client_id());
    }
    // The group is found by id prefix too.
    let id = a.groups().await.unwrap()[0].id.to_hex();
    assert_eq!(texts(&b, &id[..6]).await.len(), 3);
    relay.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_is_imported_by_the_next_commits_of_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start_relay(dir.path()).await;
    let (mut a, mut b, mut c) = trio(dir.path(), &relay.url()).await;

    let alice_before = epoch_of(&b, "trio", "alice").await;
    let bob_before = epoch_of(&a, "trio", "bob").await;
    let carol_before = epoch_of(&a, "trio", "carol").await;

    a.update("trio").await.unwrap();
    settle(&mut [&mut b, &mut c], 1).await;
    // Bob and Carol saw Alice's new epoch and have it to import.
    assert!(epoch_of(&b, "trio", "alice").await > alice_before);
    assert!(
        !b.status("trio").await.unwrap().unimported.is_empty(),
        "bob has nothing to import"
    );

    // Their next messages commit first, importing Alice's epoch (a PSK proposal each).
    b.send_text("trio", "after alice's update (bob)")
        .await
        .unwrap();
    c.send_text("trio", "after alice's update (carol)")
        .await
        .unwrap();
    settle(&mut [&mut a, &mut b, &mut c], 2).await;

    assert!(
        epoch_of(&a, "trio", "bob").await > bob_before,
        "bob did not commit"
    );
    assert!(
        epoch_of(&a, "trio", "carol").await > carol_before,
        "carol did not commit"
    );
    // Everyone agrees on every Send Group's epoch and authenticator.
    let sa = a.status("trio").await.unwrap();
    for x in [&b, &c] {
        let sx = x.status("trio").await.unwrap();
        for (ga, gx) in sa.send_groups.iter().zip(&sx.send_groups) {
            assert_eq!(ga.owner, gx.owner);
            assert_eq!(
                ga.epoch,
                gx.epoch,
                "{} vs alice on {}",
                x.client_id(),
                ga.owner
            );
            assert_eq!(ga.epoch_authenticator, gx.epoch_authenticator);
        }
    }
    // Alice's update is acknowledged: Bob's and Carol's latest commits imported it.
    for x in [&b, &c] {
        assert!(
            x.status("trio").await.unwrap().unimported.iter().all(|p| {
                let alice_sg = sa.send_groups.iter().find(|g| g.owner == "alice").unwrap();
                hex::encode(p.group_id) != alice_sg.group_id
            }),
            "{} still has alice's update to import",
            x.client_id()
        );
    }
    for x in [&a, &b, &c] {
        assert_eq!(texts(x, "trio").await.len(), 2, "{}", x.client_id());
    }
    relay.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removal_reaches_every_send_group_and_locks_the_member_out() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start_relay(dir.path()).await;
    let (mut a, mut b, mut c) = trio(dir.path(), &relay.url()).await;

    a.remove("trio", "carol").await.unwrap();
    let events = settle(&mut [&mut a, &mut b, &mut c], 3).await;
    assert!(
        events[2]
            .iter()
            .any(|e| matches!(e, Event::WeWereRemoved { .. })),
        "carol was not told: {:?}",
        events[2]
    );
    for x in [&a, &b] {
        let s = x.status("trio").await.unwrap();
        assert!(
            s.summary.removed.contains(&"carol".to_string()),
            "{}: {s:?}",
            x.client_id()
        );
        assert_not_in_others_send_groups(&s, x.client_id(), "carol");
        assert!(
            s.pending_removals.is_empty(),
            "{}: {:?}",
            x.client_id(),
            s.pending_removals
        );
    }
    assert!(c.groups().await.unwrap()[0].we_are_removed);

    a.send_text("trio", "carol cannot read this (alice)")
        .await
        .unwrap();
    b.send_text("trio", "carol cannot read this (bob)")
        .await
        .unwrap();
    settle(&mut [&mut a, &mut b, &mut c], 2).await;
    for x in [&a, &b] {
        assert_eq!(texts(x, "trio").await.len(), 2, "{}", x.client_id());
    }
    assert!(
        texts(&c, "trio")
            .await
            .iter()
            .all(|(_, t)| !t.contains("cannot read")),
        "carol read a message sent after her removal"
    );
    relay.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_that_caught_up_evicts_members_behind_past_the_threshold() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start_relay(dir.path()).await;
    let (mut a, mut b, mut c) = trio(dir.path(), &relay.url()).await;
    // Bob updates: from when Alice merges it, Carol (who does not commit) is behind.
    b.update("trio").await.unwrap();
    // With the default threshold (30 days) nobody is evicted.
    let r = a.sync_once().await.unwrap();
    assert!(
        !r.events
            .iter()
            .any(|e| matches!(e, Event::MemberEvicted { .. })),
        "{:?}",
        r.events
    );
    assert!(behind(&a, "carol").await.is_some());
    assert_eq!(behind(&a, "bob").await, None);
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    // With a threshold of one second, Carol is evicted; Bob, who is up to date, is not.
    a.set_eviction_threshold(Some(std::time::Duration::from_secs(1)))
        .await
        .unwrap();
    let r = a.sync_once().await.unwrap();
    let evicted: Vec<&str> = r
        .events
        .iter()
        .filter_map(|e| match e {
            Event::MemberEvicted { member, .. } => Some(member.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(evicted, vec!["carol"], "{:?}", r.events);
    a.set_eviction_threshold(None).await.unwrap();
    b.set_eviction_threshold(None).await.unwrap();
    let events = settle(&mut [&mut a, &mut b, &mut c], 3).await;
    assert!(
        events[2]
            .iter()
            .any(|e| matches!(e, Event::WeWereRemoved { by, .. } if by == "alice")),
        "carol was not told: {:?}",
        events[2]
    );
    for x in [&a, &b] {
        let s = x.status("trio").await.unwrap();
        assert_not_in_others_send_groups(&s, x.client_id(), "carol");
    }
    relay.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_dropped_mid_sync_restarts_with_every_message_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start_relay(dir.path()).await;
    let (mut a, mut b, c) = trio(dir.path(), &relay.url()).await;
    drop(c);

    for i in 0..20 {
        a.send_text("trio", &format!("alice {i}")).await.unwrap();
    }
    a.update("trio").await.unwrap();
    for i in 20..40 {
        a.send_text("trio", &format!("alice {i}")).await.unwrap();
    }

    // Carol fetches everything but processes only part of it, then "crashes" before her
    // outbox runs: her facade is dropped between two inputs.
    let carol_home = dir.path().join("carol");
    {
        let c = Client::open(&carol_home).unwrap();
        let followed = c.with_engine(|e| e.followed_groups()).await.unwrap();
        let req = dmls_api::SyncRequest {
            groups: followed
                .into_iter()
                .map(|g| dmls_api::SyncGroupCursor {
                    owner: g.owner,
                    group_id: g.group_id,
                    after: g.after_seq,
                })
                .collect(),
            welcomes_after: None,
            limit: Some(5_000),
            wait_ms: None,
        };
        let resp = c.relay().sync(&req).await.unwrap();
        let mut fed = 0;
        for g in resp.groups {
            for m in g.messages.into_iter().take(25) {
                let input = Input::GroupMessage {
                    owner: g.owner.clone(),
                    group_id: g.group_id.clone(),
                    seq: Some(m.seq),
                    data: m.data.0,
                };
                c.with_engine(move |e| e.handle(input, 1)).await.unwrap();
                fed += 1;
            }
        }
        assert!(fed > 0);
    }

    // Restart: the rest arrives, nothing twice.
    let mut c = Client::open(&carol_home).unwrap();
    settle(&mut [&mut a, &mut b, &mut c], 2).await;
    let got = texts(&c, "trio").await;
    let unique: HashSet<&(String, String)> = got.iter().collect();
    assert_eq!(got.len(), 40, "{got:?}");
    assert_eq!(unique.len(), 40);
    let ids: HashSet<String> = c
        .log("trio", 10_000)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.message_id.to_hex())
        .collect();
    assert_eq!(ids.len(), 40);
    relay.shutdown().await.unwrap();
}

#[tokio::test]
async fn commands_on_unknown_groups_fail_clearly_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start_relay(dir.path()).await;
    let mut a = Client::init(&dir.path().join("alice"), &relay.url(), "alice")
        .await
        .unwrap();
    let e = a.send_text("nope", "x").await.unwrap_err();
    assert!(e.to_string().contains("dmls groups"), "{e}");
    let e = a
        .create_group("solo", &["alice".to_string()])
        .await
        .unwrap_err();
    assert!(e.to_string().contains("at least one member"), "{e}");
    assert!(a.groups().await.unwrap().is_empty());
    let e = Client::init(&dir.path().join("alice"), &relay.url(), "alice")
        .await
        .unwrap_err();
    assert!(e.to_string().contains("already holds"), "{e}");
    let e = Client::init(&dir.path().join("other"), &relay.url(), "alice")
        .await
        .unwrap_err();
    assert!(e.to_string().contains("already registered"), "{e}");
    relay.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_sent_while_the_relay_is_down_goes_out_later() {
    use dmls_client::client::Delivery;
    let dir = tempfile::tempdir().unwrap();
    let relay = start_relay(dir.path()).await;
    let addr = relay.addr;
    let (mut a, mut b, mut c) = trio(dir.path(), &relay.url()).await;
    relay.shutdown().await.unwrap();

    let d = a.send_text("trio", "written offline").await.unwrap();
    assert!(matches!(d, Delivery::Queued { .. }), "{d:?}");
    // Reading local state works offline.
    assert_eq!(texts(&a, "trio").await.len(), 1);

    let db = format!("sqlite://{}", dir.path().join("relay.db").display());
    let config = dmls_relay::Config::parse_from([
        "dmls-relay",
        "--bind",
        &addr.to_string(),
        "--database-url",
        &db,
        "--rate-limit-per-second",
        "0",
        "--registrations-per-minute",
        "0",
    ]);
    let relay = dmls_relay::start(config).await.unwrap();
    settle(&mut [&mut a, &mut b, &mut c], 1).await;
    for x in [&b, &c] {
        assert_eq!(
            texts(x, "trio").await,
            vec![("alice".to_string(), "written offline".to_string())]
        );
    }
    relay.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_registers_late_is_added_by_the_next_syncs() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start_relay(dir.path()).await;
    let url = relay.url();
    let mut a = Client::init(&dir.path().join("alice"), &url, "alice")
        .await
        .unwrap();
    let mut b = Client::init(&dir.path().join("bob"), &url, "bob")
        .await
        .unwrap();
    // dave is not registered yet: the relay refuses a claim naming him (404), so the client
    // claims one by one and adds bob now.
    a.create_group("late", &["bob".to_string(), "dave".to_string()])
        .await
        .unwrap();
    let events = settle(&mut [&mut a, &mut b], 3).await;
    for e in events.iter().flatten() {
        assert!(!matches!(e, Event::Ignored { .. }), "{e:?}");
    }
    assert!(
        events[0].iter().any(|e| matches!(
            e,
            Event::KeyPackagesMissing { client_ids, .. } if client_ids == &["dave".to_string()]
        )),
        "{:?}",
        events[0]
    );
    for x in [&a, &b] {
        for sg in x.status("late").await.unwrap().send_groups {
            if sg.owner != "dave" {
                assert!(sg.joined, "{}: {sg:?}", x.client_id());
                assert_eq!(sg.members.len(), 2, "{}: {sg:?}", x.client_id());
            }
        }
    }
    a.send_text("late", "before dave").await.unwrap();
    // dave registers; the next sync of a fresh client (the CLI runs one per command) retries.
    let mut d = Client::init(&dir.path().join("dave"), &url, "dave")
        .await
        .unwrap();
    let mut a = Client::open(&dir.path().join("alice")).unwrap();
    let mut b = Client::open(&dir.path().join("bob")).unwrap();
    let ev = settle(&mut [&mut a, &mut b, &mut d], 4).await;
    for e in ev.iter().flatten() {
        assert!(!matches!(e, Event::Ignored { .. }), "{e:?}");
    }
    for x in [&a, &b, &d] {
        let s = x.status("late").await.unwrap();
        for sg in &s.send_groups {
            assert!(sg.joined, "{}: {sg:?}", x.client_id());
            assert_eq!(sg.members.len(), 3, "{}: {sg:?}", x.client_id());
        }
    }
    a.send_text("late", "welcome dave").await.unwrap();
    settle(&mut [&mut a, &mut b, &mut d], 2).await;
    let seen = texts(&d, "late").await;
    assert!(
        seen.contains(&("alice".into(), "welcome dave".into())),
        "{seen:?}"
    );
    assert!(!seen.iter().any(|(_, t)| t == "before dave"), "{seen:?}");
    assert!(
        texts(&b, "late")
            .await
            .contains(&("alice".into(), "before dave".into()))
    );
    relay.shutdown().await.unwrap();
}

/// Every future of the facade is `Send`: an application can spawn them on a multi-threaded
/// runtime (checked at compile time).
#[allow(dead_code)]
fn client_futures_are_send(c: &mut Client) {
    fn send<T: Send>(_: T) {}
    send(Client::init(Path::new("h"), "http://127.0.0.1:1", "n"));
    send(c.sync_once());
    send(c.sync_step(0));
    send(c.sync_follow(0, |_| std::ops::ControlFlow::Break(())));
    send(c.create_group("g", &[]));
    send(c.send_text("g", "t"));
    send(c.update("g"));
    send(c.remove("g", "m"));
    send(c.flush_outbox());
    send(c.try_flush_outbox());
    send(c.upkeep_key_packages());
    send(c.set_eviction_threshold(None));
    send(c.groups());
    send(c.log("g", 1));
    send(c.status("g"));
    send(c.resolve_group("g"));
    send(c.with_engine(|e| e.dgroups()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_executor_keeps_running_other_tasks_while_engines_work() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
    use std::time::{Duration, Instant};

    let dir = tempfile::tempdir().unwrap();
    let relay = start_relay(dir.path()).await;
    let (a, b, mut c) = trio(dir.path(), &relay.url()).await;
    let ticks = Arc::new(AtomicU64::new(0));
    let ticker = {
        let ticks = ticks.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(1)).await;
                ticks.fetch_add(1, SeqCst);
            }
        })
    };
    // As many engines work at once as the runtime has worker threads: each sends until the
    // ticker has ticked 20 more times. Were engine work done on the worker threads, the
    // ticker could not run and both would give up after 10 s.
    let work = |client: Client| {
        let ticks = ticks.clone();
        tokio::spawn(async move {
            let id = client.resolve_group("trio").await.unwrap();
            let (sent, ticked) = client
                .with_engine(move |e| {
                    let (start, t) = (ticks.load(SeqCst), Instant::now());
                    let mut sent = 0u64;
                    while ticks.load(SeqCst) < start + 20 && t.elapsed() < Duration::from_secs(10) {
                        let body = format!("sent while busy {sent}");
                        e.send(&id, TEXT_PLAIN, body.as_bytes(), now_ms())?;
                        sent += 1;
                    }
                    Ok::<_, EngineError>((sent, ticks.load(SeqCst) - start))
                })
                .await
                .unwrap();
            (client, sent, ticked)
        })
    };
    let (ha, hb) = (work(a), work(b));
    let (mut a, sent_a, ticked_a) = ha.await.unwrap();
    let (mut b, sent_b, ticked_b) = hb.await.unwrap();
    ticker.abort();
    assert!(
        ticked_a >= 20 && ticked_b >= 20,
        "the ticker stalled while the engines worked: {ticked_a} and {ticked_b} ticks"
    );
    // The facade works on this runtime: Carol reads everything.
    settle(&mut [&mut a, &mut b, &mut c], 2).await;
    assert_eq!(texts(&c, "trio").await.len() as u64, sent_a + sent_b);
    relay.shutdown().await.unwrap();
}

/// Whether the relay at `url` has `n` push streams open (its `/` page says so).
async fn streams_open(url: &str, n: usize) -> bool {
    let page = reqwest::get(format!("{url}/"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    page.contains(&format!("Push streams open: {n}<"))
}

async fn until_streams_open(url: &str, n: usize) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !streams_open(url, n).await {
        assert!(
            std::time::Instant::now() < deadline,
            "the relay never had {n} push streams open"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_following_client_is_pushed_messages_and_reopens_a_stream_the_relay_ends() {
    use std::time::Duration;
    let dir = tempfile::tempdir().unwrap();
    let db = dmls_relay::testing::sqlite_test_url(dir.path());
    // One waiting request per client: any long poll of bob's ends his stream.
    let relay = dmls_relay::start(dmls_relay::Config::parse_from([
        "dmls-relay",
        "--bind",
        "127.0.0.1:0",
        "--database-url",
        db.as_str(),
        "--rate-limit-per-second",
        "0",
        "--registrations-per-minute",
        "0",
        "--max-waiting-per-client",
        "1",
    ]))
    .await
    .unwrap();
    let url = relay.url();
    let (mut a, mut b, _c) = trio(dir.path(), &url).await;
    let bob_relay = b.relay().clone();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let follower = tokio::spawn(async move {
        b.sync_follow(20_000, move |e| {
            if let Event::Message(m) = e {
                let _ = tx.send(String::from_utf8_lossy(&m.body).into_owned());
            }
            std::ops::ControlFlow::Continue(())
        })
        .await
    });
    until_streams_open(&url, 1).await;
    a.send_text("trio", "one").await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await;
    assert_eq!(got.unwrap().as_deref(), Some("one"));

    // A long poll with bob's token takes his stream's place; his client opens a new stream,
    // which ends that long poll in turn.
    let long_poll = dmls_api::SyncRequest {
        groups: Vec::new(),
        welcomes_after: None,
        limit: None,
        wait_ms: Some(20_000),
    };
    let poll = bob_relay.sync(&long_poll);
    let answered = tokio::time::timeout(Duration::from_secs(10), poll).await;
    assert!(
        answered.unwrap().is_ok(),
        "the long poll is answered when bob's client reopens its stream"
    );
    until_streams_open(&url, 1).await;
    a.send_text("trio", "two").await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await;
    assert_eq!(
        got.unwrap().as_deref(),
        Some("two"),
        "nothing repeated, nothing lost"
    );
    assert!(!follower.is_finished(), "still following");
    follower.abort();
    assert!(rx.try_recv().is_err(), "nothing else arrived");
    relay.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_member_sees_the_same_key_of_each_other_and_the_same_safety_number() {
    use dmls_client::engine::{fingerprint, safety_number};
    let dir = tempfile::tempdir().unwrap();
    let relay = start_relay(dir.path()).await;
    let (a, b, c) = trio(dir.path(), &relay.url()).await;
    for (x, y) in [(&a, &b), (&a, &c), (&b, &c), (&c, &a)] {
        let seen = x.identity_keys_of(y.client_id()).await.unwrap();
        // One leaf of y in each of the three Send Groups x holds, all with y's own key.
        assert_eq!(seen.len(), 3, "{}: {seen:?}", x.client_id());
        let theirs = y.identity_key().await.unwrap();
        assert!(
            seen.iter()
                .all(|s| s.key == theirs && s.dgroup_name == "trio")
        );
        let ours = x.identity_key().await.unwrap();
        assert_eq!(
            safety_number(x.client_id(), &ours, y.client_id(), &seen[0].key),
            safety_number(y.client_id(), &theirs, x.client_id(), &ours),
        );
        assert_ne!(fingerprint(&ours), fingerprint(&theirs));
    }
    assert!(a.identity_keys_of("nobody").await.unwrap().is_empty());
    relay.shutdown().await.unwrap();
}
