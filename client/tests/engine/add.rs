//! Adding members to a running DGroup (docs/PROTOCOL.md "Add").

use crate::common::{Net, messages as bodies};
use dmls_client::engine::{AddPolicy, DGroupConfig, DGroupId, EngineError, Event, TEXT_PLAIN};

/// Delivers everything and lets every member retry its missing members (as its periodic
/// duty does), until nothing moves.
fn settle_adds(net: &mut Net, now_ms: u64) {
    for _ in 0..8 {
        net.settle_leaving(now_ms);
        let mut claimed = false;
        for i in 0..net.engines.len() {
            claimed |= !net.engines[i].retry_missing_members().unwrap().is_empty();
        }
        if !claimed && net.pool.is_empty() {
            break;
        }
    }
    net.settle_leaving(now_ms);
}

/// m0 creates "team" with m1 and m2 (of `n` identities), everyone joins.
fn team(n: usize, policy: AddPolicy, seed: u64, dir: Option<&std::path::Path>) -> (Net, DGroupId) {
    let mut net = match dir {
        Some(dir) => Net::with_files(n, 6, seed, dir),
        None => Net::new(n, 6, seed),
    };
    let d = net.engines[0]
        .create_dgroup_with_policy("team", &["m1".into(), "m2".into()], policy, 1000)
        .unwrap();
    net.settle(1000);
    (net, d)
}

/// Every listed member holds the same config, is in every Send Group, and sees the same
/// epochs and epoch authenticators.
fn assert_converged(net: &Net, d: &DGroupId, members: &[usize], want: &[&str]) {
    let mut views = Vec::new();
    for &i in members {
        let st = net.engines[i].status(d).unwrap();
        let mut set = st.summary.members.clone();
        set.retain(|m| !st.summary.removed.contains(m));
        set.sort();
        assert_eq!(set, want, "member set of m{i}");
        assert!(
            st.pending_adds.is_empty(),
            "m{i} still adds {:?}",
            st.pending_adds
        );
        let groups: Vec<_> = st
            .send_groups
            .iter()
            .map(|s| {
                let mut m = s.members.clone();
                m.sort();
                assert!(s.joined, "m{i} did not join {}'s Send Group", s.owner);
                (s.owner.clone(), s.epoch, s.epoch_authenticator.clone(), m)
            })
            .collect();
        views.push((st.summary.members.clone(), groups));
    }
    for v in &views[1..] {
        assert_eq!(v, &views[0]);
    }
}

#[test]
fn a_member_added_later_reads_only_what_follows_and_can_talk() {
    let (mut net, d) = team(4, AddPolicy::AnyMember, 11, None);
    net.engines[1]
        .send(&d, TEXT_PLAIN, b"before", 1500)
        .unwrap();
    net.settle(1500);
    net.engines[1].add(&d, &["m3".into()], 2000).unwrap();
    settle_adds(&mut net, 2000);
    assert_converged(&net, &d, &[0, 1, 2, 3], &["m0", "m1", "m2", "m3"]);
    for i in [0, 2] {
        assert!(net.events[i].iter().any(|e| matches!(e,
            Event::MemberAdded { member, by, .. } if member == "m3" && by == "m1")));
    }
    assert!(
        bodies(&net, 3).is_empty(),
        "the newcomer read {:?}",
        bodies(&net, 3)
    );
    net.engines[2].send(&d, TEXT_PLAIN, b"after", 3000).unwrap();
    net.engines[3]
        .send(&d, TEXT_PLAIN, b"hello from m3", 3000)
        .unwrap();
    settle_adds(&mut net, 3000);
    assert_eq!(bodies(&net, 3), vec![b"after".to_vec()]);
    for i in [0, 1, 2] {
        assert!(bodies(&net, i).contains(&b"hello from m3".to_vec()), "m{i}");
    }
    // Updates keep working with four: everyone imports everyone's epochs again.
    for i in 0..4 {
        net.engines[i].update(&d, 4000).unwrap();
        settle_adds(&mut net, 4000);
    }
    assert_converged(&net, &d, &[0, 1, 2, 3], &["m0", "m1", "m2", "m3"]);
    // The last updater imported every other member's latest epoch, newcomer's included.
    assert!(net.engines[3].status(&d).unwrap().unimported.is_empty());
}

#[test]
fn concurrent_adds_by_two_members_end_with_the_same_members_everywhere() {
    let (mut net, d) = team(5, AddPolicy::AnyMember, 12, None);
    net.engines[0].add(&d, &["m3".into()], 2000).unwrap();
    net.engines[2].add(&d, &["m4".into()], 2000).unwrap();
    settle_adds(&mut net, 2000);
    let all = ["m0", "m1", "m2", "m3", "m4"];
    assert_converged(&net, &d, &[0, 1, 2, 3, 4], &all);
    net.engines[4]
        .send(&d, TEXT_PLAIN, b"m4 here", 3000)
        .unwrap();
    settle_adds(&mut net, 3000);
    for i in 0..4 {
        assert_eq!(bodies(&net, i), vec![b"m4 here".to_vec()], "m{i}");
    }
}

#[test]
fn a_removal_of_a_newcomer_wins_everywhere() {
    let (mut net, d) = team(4, AddPolicy::AnyMember, 13, None);
    net.engines[0].add(&d, &["m3".into()], 2000).unwrap();
    settle_adds(&mut net, 2000);
    // m1 removes m3 while m2 sends: everybody ends with m3 removed, none adds it again.
    net.engines[1].remove(&d, "m3", 3000).unwrap();
    net.engines[2].send(&d, TEXT_PLAIN, b"x", 3000).unwrap();
    settle_adds(&mut net, 3000);
    for i in 0..3 {
        net.engines[i].commit_pending_removals(4000).unwrap();
    }
    settle_adds(&mut net, 4000);
    assert_converged(&net, &d, &[0, 1, 2], &["m0", "m1", "m2"]);
    let err = net.engines[2].add(&d, &["m3".into()], 5000).unwrap_err();
    assert!(matches!(err, EngineError::InvalidArgument(_)), "{err}");
    assert!(err.to_string().contains("removed"), "{err}");
}

#[test]
fn only_the_admin_adds_under_the_admins_policy() {
    let (mut net, d) = team(4, AddPolicy::Admins, 14, None);
    let err = net.engines[1].add(&d, &["m3".into()], 2000).unwrap_err();
    assert!(matches!(err, EngineError::InvalidArgument(_)), "{err}");
    assert!(err.to_string().contains("m0"), "{err}");
    assert_eq!(net.engines[1].outbox().unwrap().len(), 0);
    net.engines[0].add(&d, &["m3".into()], 2000).unwrap();
    settle_adds(&mut net, 2000);
    assert_converged(&net, &d, &[0, 1, 2, 3], &["m0", "m1", "m2", "m3"]);
    let st = net.engines[3].dgroups().unwrap();
    assert_eq!(st[0].add_policy, AddPolicy::Admins);
}

#[test]
fn bad_adds_are_refused_before_anything_is_sent() {
    let (mut net, d) = team(4, AddPolicy::AnyMember, 15, None);
    for (names, why) in [
        (vec!["m2".to_string()], "already"),
        (vec!["m1".to_string()], "already"),
        (vec!["m3".to_string(), "m3".to_string()], "twice"),
        (Vec::new(), "at least one"),
        (vec!["bad name!".to_string()], "client id"),
    ] {
        let err = net.engines[1].add(&d, &names, 2000).unwrap_err();
        assert!(err.to_string().contains(why), "{names:?}: {err}");
    }
    assert!(net.engines[1].outbox().unwrap().is_empty());
}

/// A member that rewrites the config it holds (a modified client) makes its next commit
/// carry it; every receiver rejects that commit and keeps its state.
fn tampered_commit_is_rejected(
    policy: AddPolicy,
    seed: u64,
    tamper: impl Fn(&DGroupConfig) -> DGroupConfig,
    why: &str,
) {
    let dir = tempfile::tempdir().unwrap();
    let (mut net, d) = team(4, policy, seed, Some(dir.path()));
    let conn = rusqlite::Connection::open(dir.path().join("m1.db")).unwrap();
    let bytes: Vec<u8> = conn
        .query_row("SELECT config FROM dmls_dgroup", [], |r| r.get(0))
        .unwrap();
    let forged = tamper(&DGroupConfig::decode(&bytes).unwrap());
    conn.execute(
        "UPDATE dmls_dgroup SET config = ?1",
        [forged.encode().unwrap()],
    )
    .unwrap();
    net.engines[1].send(&d, TEXT_PLAIN, b"hi", 2000).unwrap();
    net.drain(1, 2000);
    let before: Vec<_> = [0, 2]
        .iter()
        .map(|&i| net.engines[i].status(&d).unwrap())
        .collect();
    for (k, i) in [0usize, 2].into_iter().enumerate() {
        let mine: Vec<usize> = (0..net.pool.len())
            .filter(|&p| net.pool[p].to == i)
            .collect();
        let err = net.deliver(mine[0], false, 2000).unwrap_err();
        assert!(err.contains(why), "m{i}: {err}");
        assert_eq!(
            net.engines[i].status(&d).unwrap(),
            before[k],
            "m{i} changed state"
        );
    }
}

#[test]
fn a_commit_adding_a_member_by_a_non_admin_is_rejected() {
    tampered_commit_is_rejected(
        AddPolicy::Admins,
        16,
        |c| c.with(&["m3"], &[]),
        "only its admin m0",
    );
}

#[test]
fn a_commit_changing_other_config_fields_is_rejected() {
    tampered_commit_is_rejected(
        AddPolicy::AnyMember,
        17,
        |c| DGroupConfig {
            name: "evil".into(),
            ..c.with(&["m3"], &[])
        },
        "changes its name",
    );
    tampered_commit_is_rejected(
        AddPolicy::AnyMember,
        18,
        |c| DGroupConfig {
            add_policy: AddPolicy::Admins,
            ..c.clone()
        },
        "changes its add_policy",
    );
}
