//! Drives the real `dmls` binary as a user would: separate `--home`s, `--json` output, a relay
//! in this process on 127.0.0.1.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

mod support;

use support::{run_command, start_relay};

/// `dmls --home home --json`.
fn dmls(home: &Path) -> Command {
    let mut c = support::dmls(home);
    c.arg("--json");
    c
}

/// Runs `dmls --json` off the async runtime (the relay runs on it) and returns its output.
async fn run(home: &Path, args: &[&str]) -> Output {
    run_command(dmls(home), args).await
}

/// Runs `dmls` and parses its single JSON document; panics with stderr on failure.
async fn ok(home: &Path, args: &[&str]) -> Value {
    let out = run(home, args).await;
    assert!(
        out.status.success(),
        "dmls {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "dmls {args:?}: not one JSON document ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// `rounds` rounds in which each of `homes` runs `dmls sync`, in order.
async fn sync_rounds(homes: &[&Path], rounds: usize) {
    for _ in 0..rounds {
        for home in homes {
            ok(home, &["sync"]).await;
        }
    }
}

fn texts(log: &Value) -> Vec<String> {
    log.as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap().to_string())
        .collect()
}

struct Homes {
    _dir: tempfile::TempDir,
    a: PathBuf,
    b: PathBuf,
    c: PathBuf,
}

async fn three_identities_in_a_group(url: &str) -> Homes {
    three_identities_in_a_group_with(url, &[]).await
}

/// [`three_identities_in_a_group`], with `create_args` after `dmls group create friends bob carol`.
async fn three_identities_in_a_group_with(url: &str, create_args: &[&str]) -> Homes {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (
        dir.path().join("a"),
        dir.path().join("b"),
        dir.path().join("c"),
    );
    for (home, name) in [(&a, "alice"), (&b, "bob"), (&c, "carol")] {
        let v = ok(home, &["init", "--relay", url, "--name", name]).await;
        assert_eq!(v["client_id"], name);
    }
    let mut create = vec!["group", "create", "friends", "bob", "carol"];
    create.extend_from_slice(create_args);
    let v = ok(&a, &create).await;
    assert_eq!(v["name"], "friends");
    sync_rounds(&[&a, &b, &c], 3).await;
    Homes { _dir: dir, a, b, c }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_users_talk_through_the_dmls_binary() {
    let relay_dir = tempfile::tempdir().unwrap();
    let relay = start_relay(relay_dir.path()).await;
    let h = three_identities_in_a_group(&relay.url()).await;

    let groups = ok(&h.b, &["groups"]).await;
    assert_eq!(groups[0]["name"], "friends");
    let id = groups[0]["dgroup"].as_str().unwrap().to_string();

    ok(&h.a, &["send", "friends", "hi from alice"]).await;
    // Bob names the group by an id prefix and pipes the text in.
    let mut send = dmls(&h.b);
    send.args(["send", &id[..8]])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let out = tokio::task::spawn_blocking(move || {
        use std::io::Write as _;
        let mut child = send.spawn().unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b"hi from bob\n")
            .unwrap();
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ok(&h.c, &["send", "friends", "hi from carol"]).await;

    for home in [&h.a, &h.b, &h.c] {
        ok(home, &["sync", "--evict-after-days", "0"]).await;
    }
    for home in [&h.a, &h.b, &h.c] {
        let log = ok(home, &["log", "friends"]).await;
        let got: HashSet<String> = texts(&log).into_iter().collect();
        let want: HashSet<String> = ["hi from alice", "hi from bob", "hi from carol"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(got, want, "{home:?}");
    }

    ok(&h.a, &["update", "friends"]).await;
    let status = ok(&h.a, &["status", "friends"]).await;
    assert_eq!(status["send_groups"].as_array().unwrap().len(), 3);
    // Alice just updated: the others are behind on her group (the eviction clock), she is not.
    for sg in status["send_groups"].as_array().unwrap() {
        if sg["owner"] == "alice" {
            assert!(sg["behind_since_ms"].is_null(), "{sg}");
        } else {
            assert!(sg["behind_since_ms"].as_u64().is_some(), "{sg}");
        }
    }

    ok(&h.a, &["remove", "friends", "carol"]).await;
    sync_rounds(&[&h.a, &h.b, &h.c], 2).await;
    let status = ok(&h.b, &["status", "friends"]).await;
    assert!(
        status["removed"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m == "carol"),
        "{status}"
    );
    let groups = ok(&h.c, &["groups"]).await;
    assert_eq!(groups[0]["we_are_removed"], true);

    // Errors tell what to do next, and still print one JSON document.
    let empty = tempfile::tempdir().unwrap();
    let out = run(empty.path(), &["groups"]).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("dmls init"));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["error"].as_str().unwrap().contains("dmls init"));
    relay.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rename_reaches_every_member_and_the_new_name_finds_the_group() {
    let relay_dir = tempfile::tempdir().unwrap();
    let relay = start_relay(relay_dir.path()).await;
    let h = three_identities_in_a_group(&relay.url()).await;
    let out = run(&h.b, &["group", "rename", "friends", ""]).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("must not be empty"));

    ok(&h.b, &["send", "friends", "hi"]).await;
    let v = ok(&h.b, &["group", "rename", "friends", "book club"]).await;
    assert_eq!(v["sent"], true, "{v}");
    for home in [&h.a, &h.c] {
        let report = ok(home, &["sync"]).await;
        assert!(
            report["events"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["event"] == "group_renamed"
                    && e["name"] == "book club"
                    && e["by"] == "bob"),
            "{report}"
        );
    }
    for home in [&h.a, &h.b, &h.c] {
        let groups = ok(home, &["groups"]).await;
        assert_eq!(groups[0]["name"], "book club", "{groups}");
        assert_eq!(groups[0]["renamed_by"], "bob", "{groups}");
        // The new name finds the group, the old one no longer does.
        ok(home, &["status", "book club"]).await;
        assert!(!run(home, &["status", "friends"]).await.status.success());
    }
    // The rename is not a message.
    assert_eq!(texts(&ok(&h.a, &["log", "book club"]).await), ["hi"]);
    relay.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_who_leaves_is_removed_by_everyone_and_reads_nothing_after() {
    let relay_dir = tempfile::tempdir().unwrap();
    let relay = start_relay(relay_dir.path()).await;
    let h = three_identities_in_a_group(&relay.url()).await;
    ok(&h.a, &["send", "friends", "before"]).await;
    ok(&h.c, &["sync"]).await;

    let v = ok(&h.c, &["group", "leave", "friends"]).await;
    assert_eq!(v["announced"], true, "{v}");
    assert_eq!(v["sent"], true, "{v}");
    let groups = ok(&h.c, &["groups"]).await;
    assert!(groups[0]["left_ms"].as_u64().is_some(), "{groups}");
    assert_eq!(groups[0]["we_are_removed"], true);
    // Every Send Group state and PSK of the group is gone from carol's state.
    {
        let db = rusqlite::Connection::open(h.c.join("state.db")).unwrap();
        for table in [
            "openmls_group_data",
            "openmls_psks",
            "dmls_psk",
            "dmls_send_group",
        ] {
            let n: i64 = db
                .query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))
                .unwrap();
            assert_eq!(n, 0, "{table} still has rows");
        }
    }
    // Leaving twice, or sending after, is refused with a reason.
    let out = run(&h.c, &["group", "leave", "friends"]).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already left"));
    assert!(!run(&h.c, &["send", "friends", "x"]).await.status.success());

    // The others read the announcement and remove carol from their Send Groups. Whoever
    // reads another's commit removing carol before the announcement is told of that removal.
    let mut events = vec![Vec::new(), Vec::new()];
    for _ in 0..2 {
        for (i, home) in [&h.a, &h.b].into_iter().enumerate() {
            let report = ok(home, &["sync"]).await;
            for e in report["events"].as_array().unwrap() {
                if e["member"] == "carol" {
                    events[i].push(e["event"].as_str().unwrap().to_string());
                }
            }
        }
    }
    assert_eq!(events[0], ["member_left"], "alice syncs first");
    assert!(
        events[1] == ["member_left"] || events[1] == ["member_removed"],
        "{events:?}"
    );
    for home in [&h.a, &h.b] {
        let status = ok(home, &["status", "friends"]).await;
        assert_eq!(status["removed"], serde_json::json!(["carol"]), "{status}");
        assert_eq!(
            status["pending_removals"],
            serde_json::json!([]),
            "{status}"
        );
        for sg in status["send_groups"].as_array().unwrap() {
            if sg["owner"] != "carol" {
                assert!(
                    !sg["members"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|m| m == "carol"),
                    "{sg}"
                );
            }
        }
    }
    ok(&h.b, &["send", "friends", "after"]).await;
    ok(&h.a, &["sync"]).await;
    ok(&h.c, &["sync"]).await;
    assert_eq!(
        texts(&ok(&h.a, &["log", "friends"]).await),
        ["before", "after"]
    );
    assert_eq!(texts(&ok(&h.c, &["log", "friends"]).await), ["before"]);
    let status = ok(&h.c, &["status", "friends"]).await;
    assert_eq!(status["send_groups"], serde_json::json!([]), "{status}");
    relay.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_dmls_sync_restarts_with_every_message_exactly_once() {
    let relay_dir = tempfile::tempdir().unwrap();
    let relay = start_relay(relay_dir.path()).await;
    let h = three_identities_in_a_group(&relay.url()).await;

    for i in 0..30 {
        ok(&h.a, &["send", "friends", &format!("m{i}")]).await;
        if i % 10 == 9 {
            ok(&h.a, &["update", "friends"]).await;
        }
    }
    // Kill Bob's sync at several points in its run.
    for delay_ms in [30u64, 120, 400] {
        let mut cmd = dmls(&h.b);
        cmd.arg("sync").stdout(Stdio::null()).stderr(Stdio::null());
        tokio::task::spawn_blocking(move || {
            let mut child = cmd.spawn().unwrap();
            std::thread::sleep(Duration::from_millis(delay_ms));
            let _ = child.kill();
            let _ = child.wait();
        })
        .await
        .unwrap();
    }
    ok(&h.b, &["sync"]).await;
    ok(&h.b, &["sync"]).await;
    let log = ok(&h.b, &["log", "friends", "--limit", "1000"]).await;
    let got = texts(&log);
    let unique: HashSet<&String> = got.iter().collect();
    assert_eq!(got.len(), 30, "{got:?}");
    assert_eq!(unique.len(), 30, "{got:?}");

    // Both sides see the same safety number; each sees the other's real key.
    let a_verifies = ok(&h.a, &["verify", "bob"]).await;
    let b_verifies = ok(&h.b, &["verify", "alice"]).await;
    assert_eq!(a_verifies["safety_number"], b_verifies["safety_number"]);
    let a_who = ok(&h.a, &["whoami"]).await;
    let b_who = ok(&h.b, &["whoami"]).await;
    assert_eq!(a_who["client_id"], "alice");
    assert_eq!(a_verifies["their_fingerprint"], b_who["fingerprint"]);
    assert_eq!(b_verifies["their_fingerprint"], a_who["fingerprint"]);
    assert_ne!(a_who["fingerprint"], b_who["fingerprint"]);
    let me = run(&h.a, &["verify", "alice"]).await;
    assert!(!me.status.success(), "verifying oneself is refused");
    let stranger = run(&h.a, &["verify", "nobody"]).await;
    assert!(!stranger.status.success());
    assert!(String::from_utf8_lossy(&stranger.stderr).contains("no leaf of nobody"));

    // `sync --follow --json` prints one JSON object per line as messages come.
    let mut follow = dmls(&h.c);
    follow
        .args(["sync", "--follow", "--wait-ms", "2000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = follow.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead as _;
        let mut lines = Vec::new();
        for line in std::io::BufReader::new(stdout).lines() {
            let line = line.unwrap();
            let v: Value = serde_json::from_str(&line).unwrap();
            let done = v["event"] == "message" && v["text"] == "live";
            lines.push(v);
            if done {
                break;
            }
        }
        lines
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    ok(&h.a, &["send", "friends", "live"]).await;
    let lines = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !reader.is_finished() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        reader.join().unwrap()
    })
    .await
    .unwrap();
    assert!(lines.iter().any(|v| v["text"] == "live"), "{lines:?}");
    relay.shutdown().await.unwrap();
}

/// A new identity `name` in `dir`, with key packages on the relay (`dmls init`, one sync).
async fn a_fourth_identity(dir: &Path, url: &str, name: &str) -> PathBuf {
    let home = dir.join(name);
    let v = ok(&home, &["init", "--relay", url, "--name", name]).await;
    assert_eq!(v["client_id"], name);
    ok(&home, &["sync"]).await;
    home
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_users_add_a_fourth_who_reads_what_follows_and_talks() {
    let relay_dir = tempfile::tempdir().unwrap();
    let relay = start_relay(relay_dir.path()).await;
    let h = three_identities_in_a_group(&relay.url()).await;
    ok(&h.a, &["send", "friends", "before"]).await;
    sync_rounds(&[&h.a, &h.b, &h.c], 1).await;
    let d = a_fourth_identity(h._dir.path(), &relay.url(), "dave").await;

    let v = ok(&h.b, &["group", "add", "friends", "dave"]).await;
    assert_eq!(v["added"], serde_json::json!(["dave"]), "{v}");
    assert_eq!(v["group"], "friends", "{v}");
    assert_eq!(v["sent"], true, "{v}");
    // The others claim dave's key packages and add him to their Send Groups; dave joins.
    sync_rounds(&[&h.a, &h.b, &h.c, &d], 3).await;
    let groups = ok(&d, &["groups"]).await;
    assert_eq!(groups.as_array().unwrap().len(), 1, "{groups}");
    assert_eq!(groups[0]["name"], "friends", "{groups}");
    assert!(
        groups[0]["members"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m == "dave"),
        "{groups}"
    );

    ok(&h.c, &["send", "friends", "after"]).await;
    ok(&d, &["send", "friends", "hi from dave"]).await;
    sync_rounds(&[&h.a, &h.b, &h.c, &d], 2).await;
    let dave_reads = texts(&ok(&d, &["log", "friends"]).await);
    assert!(dave_reads.iter().any(|t| t == "after"), "{dave_reads:?}");
    assert!(!dave_reads.iter().any(|t| t == "before"), "{dave_reads:?}");
    let alice_reads = texts(&ok(&h.a, &["log", "friends"]).await);
    assert!(
        alice_reads.iter().any(|t| t == "hi from dave"),
        "{alice_reads:?}"
    );
    let status = ok(&h.a, &["status", "friends"]).await;
    assert_eq!(status["pending_adds"], serde_json::json!([]), "{status}");
    relay.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_admin_adds_when_the_group_says_so() {
    let relay_dir = tempfile::tempdir().unwrap();
    let relay = start_relay(relay_dir.path()).await;
    let url = relay.url();
    let h = three_identities_in_a_group_with(&url, &["--adds", "admins"]).await;
    let (a, b) = (&h.a, &h.b);
    a_fourth_identity(h._dir.path(), &url, "dave").await;

    for home in [a, b] {
        let groups = ok(home, &["groups"]).await;
        assert_eq!(groups[0]["adds"], "admins", "{groups}");
    }
    let out = run(b, &["group", "add", "friends", "dave"]).await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("admin"), "{stderr}");
    let v = ok(a, &["group", "add", "friends", "dave"]).await;
    assert_eq!(v["added"], serde_json::json!(["dave"]), "{v}");
    assert_eq!(v["sent"], true, "{v}");
    relay.shutdown().await.unwrap();
}
