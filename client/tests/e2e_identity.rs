//! Identity keys against a relay that substitutes them (docs/PROTOCOL.md "Pinning",
//! docs/SECURITY.md): clients talk through a key-substituting proxy in front of a real relay
//! (SQLite, 127.0.0.1), through the client library and through the `dmls` binary.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::{Path, PathBuf};

use dmls_client::client::{Client, now_ms};
use dmls_client::engine::{Effect, Engine, Event, Input, KeyChange, fingerprint, safety_number};
use serde_json::Value;
use support::key_substituting_relay::KeySubstitutingRelay;
use support::{run, settle, start_relay};

async fn init(dir: &Path, url: &str, name: &str) -> Client {
    Client::init(&dir.join(name), url, name).await.unwrap()
}

/// Creates `group` by `creator` with `others` and lets everyone join.
async fn group_of(creator: &mut Client, others: &mut [&mut Client], group: &str) {
    let names: Vec<String> = others.iter().map(|o| o.client_id().to_string()).collect();
    creator.create_group(group, &names).await.unwrap();
    let mut all: Vec<&mut Client> = vec![creator];
    all.extend(others.iter_mut().map(|o| &mut **o));
    settle(&mut all, 3).await;
}

/// An engine of the relay operator's with an identity named `name` of its own.
fn forger(name: &str) -> Engine {
    let mut e = Engine::open(rusqlite::Connection::open_in_memory().unwrap()).unwrap();
    e.create_identity(name).unwrap();
    e
}

/// The key changes among `events`.
fn key_changes(events: &[Event]) -> Vec<KeyChange> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::KeyChanged { change, .. } => Some(change.clone()),
            _ => None,
        })
        .collect()
}

/// A Welcome the operator's `fake` identity makes for `to`'s real key package (claimed
/// through the relay as anyone can) to a DGroup it creates.
async fn forged_welcome(fake: &mut Engine, to: &str, claimer: &Client) -> Vec<u8> {
    fake.create_dgroup("forged", &[to.to_string()], now_ms())
        .unwrap();
    let claim = fake
        .outbox()
        .unwrap()
        .into_iter()
        .find(|i| matches!(i.effect, Effect::ClaimKeyPackages { .. }))
        .unwrap();
    let claimed = claimer
        .relay()
        .claim_key_packages(&[to.to_string()])
        .await
        .unwrap();
    fake.handle(
        Input::ClaimedKeyPackages {
            outbox_id: claim.id,
            key_packages: claimed
                .key_packages
                .into_iter()
                .map(|k| (k.client_id, k.key_package.0))
                .collect(),
            missing: Vec::new(),
        },
        now_ms(),
    )
    .unwrap();
    fake.outbox()
        .unwrap()
        .into_iter()
        .find_map(|i| match i.effect {
            Effect::PostWelcomes(w) => w.into_iter().find(|(r, _)| r == to).map(|(_, d)| d),
            _ => None,
        })
        .unwrap()
}

/// Feeds every Welcome in `inbox_of`'s inbox to `fake`: true if one of them let it join.
async fn forger_joins_anything(fake: &mut Engine, inbox_of: &Client) -> bool {
    let page = inbox_of.relay().list_welcomes(0, 1000).await.unwrap();
    page.welcomes.into_iter().any(|w| {
        fake.handle(
            Input::Welcome {
                inbox_id: None,
                from: w.from,
                data: w.data.0,
            },
            now_ms(),
        )
        .is_ok_and(|events| {
            events
                .iter()
                .any(|e| matches!(e, Event::JoinedSendGroup { .. }))
        })
    })
}

/// A relay, the key-substituting relay in front of it, and alice and bob, its clients, who
/// share the group "first".
async fn alice_and_bob_who_met(
    dir: &Path,
) -> (
    dmls_relay::RunningRelay,
    KeySubstitutingRelay,
    Client,
    Client,
) {
    let relay = start_relay(dir).await;
    let proxy = KeySubstitutingRelay::start(&relay.url()).await;
    let (mut a, mut b) = (
        init(dir, &proxy.url(), "alice").await,
        init(dir, &proxy.url(), "bob").await,
    );
    group_of(&mut a, &mut [&mut b], "first").await;
    (relay, proxy, a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_first_contact_a_substituted_key_package_is_refused_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let (relay, proxy, mut a, mut b) = alice_and_bob_who_met(dir.path()).await;
    let real_bob = b.identity_key().await.unwrap();
    let alice_contacts = a.contacts().await.unwrap();
    assert_eq!(alice_contacts.len(), 1);
    assert_eq!(alice_contacts[0].client_id, "bob");
    assert_eq!(alice_contacts[0].key, real_bob);
    assert!(alice_contacts[0].first_seen_where.contains("first"));

    // The operator hands out key packages of its own "bob".
    let mut fake = forger("bob");
    proxy.substitute_key_packages("bob", fake.generate_key_packages(4).unwrap());
    a.create_group("second", &["bob".to_string()])
        .await
        .unwrap();
    assert!(proxy.substituted() >= 1);
    let changes = key_changes(&a.take_events());
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert_eq!(changes[0].client_id, "bob");
    assert_eq!(changes[0].pinned_key, real_bob);
    assert_eq!(changes[0].new_key, fake.identity_key().unwrap());
    assert!(changes[0].seen_where.contains("second"));
    // Not added: alice's Send Group of "second" holds only her, and what she sends there
    // reaches no key of the operator's.
    let s = a.status("second").await.unwrap();
    let own = s.send_groups.iter().find(|g| g.owner == "alice").unwrap();
    assert_eq!(own.members, vec!["alice".to_string()]);
    a.send_text("second", "for bob only").await.unwrap();
    assert!(!forger_joins_anything(&mut fake, &b).await);
    // The change is kept, with the pin unchanged, until the user decides.
    let pending = a.key_changes().await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(a.contacts().await.unwrap()[0].key, real_bob);
    // Claims go on being answered with forged packages; alice does not claim again for bob
    // while the change is unresolved.
    settle(&mut [&mut a], 2).await;
    assert_eq!(a.key_changes().await.unwrap().len(), 1);

    // The operator also rewrites the Welcome bob sends alice into one of its "bob"'s.
    let forged = forged_welcome(&mut fake, "alice", &b).await;
    proxy.rewrite_next_welcome_from("bob", forged);
    b.create_group("bobs", &["alice".to_string()])
        .await
        .unwrap();
    let events = settle(&mut [&mut a], 1).await.remove(0);
    let changes = key_changes(&events);
    assert_eq!(changes.len(), 1, "{events:?}");
    assert!(changes[0].seen_where.contains("Welcome"));
    assert!(
        !events.iter().any(|e| matches!(
            e,
            Event::JoinedDGroup { .. } | Event::JoinedSendGroup { .. }
        )),
        "{events:?}"
    );
    assert!(a.status("forged").await.is_err());
    relay.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_substitution_at_first_contact_gives_different_safety_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start_relay(dir.path()).await;
    let proxy = KeySubstitutingRelay::start(&relay.url()).await;
    let (mut a, mut d) = (
        init(dir.path(), &proxy.url(), "alice").await,
        init(dir.path(), &proxy.url(), "dave").await,
    );
    // At alice's first contact with dave, the operator hands out its own "dave".
    let mut fake = forger("dave");
    proxy.substitute_key_packages("dave", fake.generate_key_packages(1).unwrap());
    a.create_group("ad", &["dave".to_string()]).await.unwrap();
    // Nothing to notice here: it is a first contact.
    assert!(key_changes(&a.take_events()).is_empty());
    // dave meets alice in a group of his own, with alice's real key.
    d.create_group("da", &["alice".to_string()]).await.unwrap();
    settle(&mut [&mut a, &mut d], 3).await;

    let pinned_by = |c: &[dmls_client::engine::Contact], id: &str| {
        c.iter().find(|x| x.client_id == id).unwrap().key.clone()
    };
    let (ka, kd) = (
        a.identity_key().await.unwrap(),
        d.identity_key().await.unwrap(),
    );
    let alice_sees = safety_number(
        "alice",
        &ka,
        "dave",
        &pinned_by(&a.contacts().await.unwrap(), "dave"),
    );
    let dave_sees = safety_number(
        "dave",
        &kd,
        "alice",
        &pinned_by(&d.contacts().await.unwrap(), "alice"),
    );
    assert_ne!(alice_sees, dave_sees, "the substitution must show");
    assert_eq!(
        pinned_by(&a.contacts().await.unwrap(), "dave"),
        fake.identity_key().unwrap()
    );
    // Without the substitution they agree.
    assert_eq!(dave_sees, safety_number("alice", &ka, "dave", &kd));
    relay.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_with_another_key_in_one_send_group_makes_the_dgroup_unsafe() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start_relay(dir.path()).await;
    let proxy = KeySubstitutingRelay::start(&relay.url()).await;
    let (mut a, mut b, mut d) = (
        init(dir.path(), &proxy.url(), "alice").await,
        init(dir.path(), &proxy.url(), "bob").await,
        init(dir.path(), &proxy.url(), "dave").await,
    );
    // alice knows bob's real key.
    group_of(&mut a, &mut [&mut b], "ab").await;
    // dave meets bob for the first time, and the operator gives dave its own "bob".
    let fake = forger("bob");
    let mut fake = fake;
    proxy.substitute_key_packages("bob", fake.generate_key_packages(1).unwrap());
    d.create_group("mix", &["alice".to_string(), "bob".to_string()])
        .await
        .unwrap();
    let events = settle(&mut [&mut a, &mut b, &mut d], 3).await;
    // alice joined dave's Send Group (dave's key is fine) and saw bob's other key there.
    let changes = key_changes(&events[0]);
    assert!(
        changes
            .iter()
            .any(|c| c.client_id == "bob" && c.seen_where.contains("dave's Send Group")),
        "{changes:?}"
    );
    let s = a.status("mix").await.unwrap();
    assert_eq!(s.key_mismatches.len(), 1, "{:?}", s.key_mismatches);
    let m = &s.key_mismatches[0];
    assert_eq!(m.member, "bob");
    assert_eq!(m.send_group_owner, "dave");
    assert_eq!(m.leaf_key, fake.identity_key().unwrap());
    assert_eq!(
        m.pinned_key.as_deref(),
        Some(&b.identity_key().await.unwrap()[..])
    );
    // bob's leaf in alice's own Send Group and in bob's is the real one.
    let keys = a.identity_keys_of("bob").await.unwrap();
    let in_mix: Vec<_> = keys.iter().filter(|k| k.dgroup_name == "mix").collect();
    assert!(in_mix.len() >= 2, "{keys:?}");
    assert!(in_mix.iter().any(|k| k.key != m.leaf_key));
    relay.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contact_that_really_made_a_new_identity_works_again_after_explicit_trust() {
    let dir = tempfile::tempdir().unwrap();
    let (relay, _proxy, mut a, b) = alice_and_bob_who_met(dir.path()).await;
    let old_key = b.identity_key().await.unwrap();

    // bob loses his state and makes a new identity on the same account.
    let mut b2 = recreate(dir.path(), &b, "bob2").await;
    drop(b);
    let new_key = b2.identity_key().await.unwrap();
    assert_ne!(new_key, old_key);
    a.create_group("again", &["bob".to_string()]).await.unwrap();
    let changes = key_changes(&a.take_events());
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert_eq!(changes[0].new_key, new_key);
    // Not trusted yet: bob is not added, neither by a sync nor by a late-add retry (which
    // does not claim for him while the change is unresolved).
    settle(&mut [&mut a, &mut b2], 2).await;
    assert!(
        a.with_engine(|e| e.retry_missing_members())
            .await
            .unwrap()
            .is_empty()
    );
    let own = |s: &dmls_client::engine::DGroupStatus| {
        s.send_groups
            .iter()
            .find(|g| g.owner == "alice")
            .unwrap()
            .members
            .clone()
    };
    assert_eq!(own(&a.status("again").await.unwrap()), vec!["alice"]);
    // Nothing alice sends reaches the new key before she trusts it.
    a.send_text("again", "before trust").await.unwrap();
    // The new bob invites alice: his Welcome is held, not joined.
    b2.create_group("bobnew", &["alice".to_string()])
        .await
        .unwrap();
    let events = settle(&mut [&mut a], 1).await.remove(0);
    assert_eq!(key_changes(&events).len(), 1, "{events:?}");
    assert!(a.status("bobnew").await.is_err());

    // alice checks the fingerprint with bob out of band and trusts it: the held Welcome is
    // joined at once.
    a.trust("bob", &fingerprint(&new_key)).await.unwrap();
    let events = a.take_events();
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::JoinedDGroup { name, .. } if name == "bobnew")),
        "{events:?}"
    );
    assert!(a.status("bobnew").await.is_ok());
    assert!(a.key_changes().await.unwrap().is_empty());
    let pinned = a.contacts().await.unwrap();
    assert_eq!(pinned[0].key, new_key);
    assert_eq!(pinned[0].verified_ms, None);
    settle(&mut [&mut a, &mut b2], 4).await;
    assert_eq!(own(&a.status("again").await.unwrap()), vec!["alice", "bob"]);
    a.send_text("again", "welcome back").await.unwrap();
    b2.send_text("again", "thanks").await.unwrap();
    settle(&mut [&mut a, &mut b2], 2).await;
    let texts = |log: Vec<dmls_client::engine::ReceivedMessage>| -> Vec<String> {
        let mut t: Vec<String> = log
            .into_iter()
            .map(|m| String::from_utf8(m.body).unwrap())
            .collect();
        t.sort();
        t
    };
    // "before trust" was sent before bob was added: he cannot read it.
    assert_eq!(
        texts(b2.log("again", 10).await.unwrap()),
        ["thanks", "welcome back"]
    );
    assert_eq!(
        texts(a.log("again", 10).await.unwrap()),
        ["before trust", "thanks", "welcome back"]
    );
    // The old identity's leaves in "first" no longer carry bob's pinned key: that group is
    // unsafe until bob is removed there.
    let first = a.status("first").await.unwrap();
    assert!(
        first
            .key_mismatches
            .iter()
            .any(|m| m.member == "bob" && m.leaf_key == old_key),
        "{:?}",
        first.key_mismatches
    );
    relay.shutdown().await.unwrap();
}

/// Claims `owner`'s key packages until only its last-resort one is left.
async fn use_up_key_packages(owner: &Client) {
    loop {
        let claimed = owner
            .relay()
            .claim_key_packages(&[owner.client_id().to_string()])
            .await
            .unwrap();
        if claimed.key_packages.iter().all(|k| k.last_resort) {
            break;
        }
    }
}

/// `old` makes a new identity in `dir/home` on the same relay account: its old key packages
/// are used up and the new ones uploaded.
async fn recreate(dir: &Path, old: &Client, home: &str) -> Client {
    let new_home = dir.join(home);
    std::fs::create_dir_all(&new_home).unwrap();
    std::fs::copy(old.home().join("config.json"), new_home.join("config.json")).unwrap();
    use_up_key_packages(old).await;
    let mut new = Client::open(&new_home).unwrap();
    new.sync_once().await.unwrap();
    new
}

// ---------------------------------------------------------------- the dmls binary

async fn json(home: &Path, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = run(home, &all).await;
    assert!(
        out.status.success(),
        "dmls {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

async fn sync_all(homes: &[&PathBuf], rounds: usize) {
    for _ in 0..rounds {
        for h in homes {
            json(h, &["sync"]).await;
        }
    }
}

fn events_named<'a>(v: &'a Value, name: &str) -> Vec<&'a Value> {
    v["events"]
        .as_array()
        .map(|a| a.iter().filter(|e| e["event"] == name).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dmls_binary_reports_a_substituted_key_and_trusts_a_real_new_one() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start_relay(dir.path()).await;
    let proxy = KeySubstitutingRelay::start(&relay.url()).await;
    let (ha, hb) = (dir.path().join("a"), dir.path().join("b"));
    json(&ha, &["init", "--relay", &proxy.url(), "--name", "alice"]).await;
    json(&hb, &["init", "--relay", &proxy.url(), "--name", "bob"]).await;
    json(&ha, &["group", "create", "first", "bob"]).await;
    sync_all(&[&ha, &hb], 3).await;
    let bob_fp = json(&hb, &["whoami"]).await["fingerprint"].clone();
    let contacts = json(&ha, &["contacts"]).await;
    assert_eq!(contacts["contacts"][0]["client_id"], "bob");
    assert_eq!(contacts["contacts"][0]["fingerprint"], bob_fp);
    assert_eq!(contacts["contacts"][0]["verified"], false);

    // (a) A substituted key package is refused and reported.
    let mut fake = forger("bob");
    proxy.substitute_key_packages("bob", fake.generate_key_packages(2).unwrap());
    let created = json(&ha, &["group", "create", "second", "bob"]).await;
    let changed = events_named(&created, "key_changed");
    assert_eq!(changed.len(), 1, "{created}");
    let fake_fp = fingerprint(&fake.identity_key().unwrap());
    assert_eq!(changed[0]["new_fingerprint"], fake_fp.as_str());
    assert_eq!(changed[0]["pinned_fingerprint"], bob_fp);
    let human = run(&ha, &["contacts"]).await;
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(
        text.contains("WARNING: bob's identity key changed"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "dmls contacts trust bob --fingerprint '{fake_fp}'"
        )),
        "{text}"
    );
    let status = json(&ha, &["status", "second"]).await;
    assert_eq!(status["safe"], false);
    assert_eq!(status["key_changes"][0]["client_id"], "bob");
    assert_eq!(
        status["key_changes"][0]["new_fingerprint"],
        fake_fp.as_str()
    );
    let human = run(&ha, &["status", "second"]).await;
    assert!(
        String::from_utf8_lossy(&human.stdout).contains("WARNING: bob's identity key changed"),
        "{}",
        String::from_utf8_lossy(&human.stdout)
    );
    let own = status["send_groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["owner"] == "alice")
        .unwrap();
    assert_eq!(own["members"], serde_json::json!(["alice"]));
    assert!(!forger_joins_anything(&mut fake, &Client::open(&hb).unwrap()).await);

    // Bad input changes nothing.
    let before = json(&ha, &["contacts"]).await;
    for bad in ["", "abcd", "zzzz zzzz zzzz zzzz zzzz zzzz zzzz zzzz"] {
        let out = run(&ha, &["contacts", "trust", "bob", "--fingerprint", bad]).await;
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("is not a fingerprint"), "{err}");
    }
    let out = run(
        &ha,
        &["contacts", "trust", "nobody", "--fingerprint", &fake_fp],
    )
    .await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nobody is not a contact"));
    assert_eq!(json(&ha, &["contacts"]).await, before);

    // (d) bob really makes a new identity: reported, then trusted, then they talk.
    let hb2 = dir.path().join("b2");
    std::fs::create_dir_all(&hb2).unwrap();
    std::fs::copy(hb.join("config.json"), hb2.join("config.json")).unwrap();
    use_up_key_packages(&Client::open(&hb).unwrap()).await;
    json(&hb2, &["sync"]).await;
    let new_fp = json(&hb2, &["whoami"]).await["fingerprint"]
        .as_str()
        .unwrap()
        .to_string();
    let created = json(&ha, &["group", "create", "third", "bob"]).await;
    let changed = events_named(&created, "key_changed");
    assert_eq!(changed.len(), 1, "{created}");
    assert_eq!(changed[0]["new_fingerprint"], new_fp.as_str());
    let trusted = json(&ha, &["contacts", "trust", "bob", "--fingerprint", &new_fp]).await;
    assert_eq!(trusted["fingerprint"], new_fp.as_str());
    sync_all(&[&ha, &hb2], 4).await;
    json(&ha, &["send", "third", "hello new bob"]).await;
    sync_all(&[&hb2], 1).await;
    let log = json(&hb2, &["log", "third"]).await;
    assert_eq!(log[0]["text"], "hello new bob", "{log}");
    // Verified only once confirmed; the old identity's leaves in "first" are named.
    let v = json(&ha, &["verify", "bob"]).await;
    assert_eq!(v["verified"], false);
    assert_eq!(v["their_fingerprint"], new_fp.as_str());
    assert!(
        v["other_keys"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["fingerprint"] == bob_fp),
        "{v}"
    );
    let first = json(&ha, &["status", "first"]).await;
    assert_eq!(first["safe"], false);
    let v = json(&ha, &["verify", "bob", "--confirm"]).await;
    assert_eq!(v["verified"], true);
    let status = json(&ha, &["status", "third"]).await;
    assert_eq!(status["unverified"], serde_json::json!([]));
    assert_eq!(status["safe"], true);
    relay.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_verified_refuses_unverified_members_and_a_damaged_contact_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start_relay(dir.path()).await;
    let (ha, hb) = (dir.path().join("a"), dir.path().join("b"));
    json(&ha, &["init", "--relay", &relay.url(), "--name", "alice"]).await;
    json(&hb, &["init", "--relay", &relay.url(), "--name", "bob"]).await;
    let hc = dir.path().join("c");
    json(&hc, &["init", "--relay", &relay.url(), "--name", "carol"]).await;
    // A new contact is not verified.
    let out = run(&ha, &["group", "create", "g", "bob", "--require-verified"]).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not verified: bob"));
    json(&ha, &["contacts", "require-verified", "on"]).await;
    let out = run(&ha, &["group", "create", "g", "bob"]).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("bob is not verified"));
    assert_eq!(
        json(&ha, &["groups"]).await.as_array().map(Vec::len),
        Some(0)
    );
    json(&ha, &["contacts", "require-verified", "off"]).await;
    json(&ha, &["group", "create", "g", "bob"]).await;
    sync_all(&[&ha, &hb], 3).await;
    json(&ha, &["verify", "bob", "--confirm"]).await;
    json(&ha, &["contacts", "require-verified", "on"]).await;
    json(&ha, &["group", "create", "h", "bob", "--require-verified"]).await;
    // Someone new is made a contact first, verified, then put in a group.
    let added = json(&ha, &["contacts", "add", "carol"]).await;
    let carol_fp = json(&hc, &["whoami"]).await["fingerprint"].clone();
    assert_eq!(added["fingerprint"], carol_fp);
    let alice_sees = json(&ha, &["verify", "carol"]).await["safety_number"].clone();
    json(&hc, &["contacts", "add", "alice"]).await;
    assert_eq!(
        json(&hc, &["verify", "alice"]).await["safety_number"],
        alice_sees
    );
    json(&ha, &["verify", "carol", "--confirm"]).await;
    json(&ha, &["group", "create", "with-carol", "carol"]).await;
    for (who, why) in [
        ("nobody", "unknown client ids: nobody"),
        ("alice", "alice is you"),
    ] {
        let out = run(&ha, &["contacts", "add", who]).await;
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(why), "{err}");
    }

    // A damaged contacts entry: a clear error, and nothing changes.
    let db = ha.join("state.db");
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute(
            "UPDATE dmls_contact SET key = x'0102' WHERE client_id = 'bob'",
            [],
        )
        .unwrap();
    }
    let out = run(&ha, &["contacts"]).await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("identity key of 2 bytes"), "{err}");
    let out = run(&ha, &["group", "create", "i", "bob"]).await;
    assert!(!out.status.success());
    let conn = rusqlite::Connection::open(&db).unwrap();
    let key: Vec<u8> = conn
        .query_row(
            "SELECT key FROM dmls_contact WHERE client_id = 'bob'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(key, vec![1, 2]);
    let groups: i64 = conn
        .query_row("SELECT count(*) FROM dmls_dgroup", [], |r| r.get(0))
        .unwrap();
    assert_eq!(groups, 3);
    relay.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_stores_nothing_it_could_read() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start_relay(dir.path()).await;
    let (mut a, mut b) = (
        init(dir.path(), &relay.url(), "alice").await,
        init(dir.path(), &relay.url(), "bob").await,
    );
    group_of(&mut a, &mut [&mut b], "secret-plans").await;
    let text = "the eagle lands at midnight on pier 39";
    a.send_text("secret-plans", text).await.unwrap();
    b.send_text("secret-plans", text).await.unwrap();
    settle(&mut [&mut a, &mut b], 2).await;
    assert_eq!(b.log("secret-plans", 10).await.unwrap().len(), 2);
    relay.shutdown().await.unwrap();
    // Everything the relay keeps: its database and its write-ahead log.
    let mut stored = Vec::new();
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("relay.db") {
            stored.extend(std::fs::read(&path).unwrap());
        }
    }
    assert!(
        stored.len() > 10_000,
        "the relay stored {} bytes",
        stored.len()
    );
    for needle in [text.as_bytes(), b"secret-plans", b"eagle"] {
        assert!(
            !stored.windows(needle.len()).any(|w| w == needle),
            "the relay stored {:?} in clear",
            String::from_utf8_lossy(needle)
        );
    }
}
