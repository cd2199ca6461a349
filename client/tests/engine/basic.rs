//! Basic flows of the engine with a few members and an in-order network.

use crate::common::{Net, messages};
use dmls_client::engine::{DGroupId, Engine, Event, TEXT_PLAIN};

#[test]
fn three_members_create_join_send_and_update() {
    let t0 = std::time::Instant::now();
    let mut net = Net::new(3, 4, 1);
    let others = vec!["m1".to_string(), "m2".to_string()];
    let d = net.engines[0].create_dgroup("team", &others, 1000).unwrap();
    net.settle(1000);
    eprintln!("setup {:?}", t0.elapsed());
    for i in 0..3 {
        let st = net.engines[i].status(&d).unwrap();
        for sg in &st.send_groups {
            assert!(sg.joined, "member {i} not in {}'s group", sg.owner);
            assert_eq!(sg.epoch, Some(1));
        }
    }
    net.engines[1].send(&d, TEXT_PLAIN, b"hello", 2000).unwrap();
    net.settle(2000);
    assert_eq!(messages(&net, 0), vec![b"hello".to_vec()]);
    assert_eq!(messages(&net, 2), vec![b"hello".to_vec()]);
    net.engines[2].update(&d, 3000).unwrap();
    net.settle(3000);
    net.engines[0]
        .send(&d, TEXT_PLAIN, b"after update", 4000)
        .unwrap();
    net.settle(4000);
    assert_eq!(messages(&net, 1).len(), 1);
    assert_eq!(messages(&net, 2).len(), 2);
    net.engines[1].send(&d, TEXT_PLAIN, b"x", 5000).unwrap();
    net.settle(5000);
    let auths: Vec<_> = (0..3)
        .map(|i| {
            net.engines[i]
                .status(&d)
                .unwrap()
                .send_groups
                .into_iter()
                .map(|s| (s.owner, s.epoch, s.epoch_authenticator))
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(auths[0], auths[1]);
    assert_eq!(auths[0], auths[2]);
    eprintln!("{:?}", auths[0]);
    eprintln!(
        "total {:?} counters {:?}",
        t0.elapsed(),
        net.engines[0].counters()
    );
}

#[test]
#[ignore]
fn timing_eight_members() {
    let t0 = std::time::Instant::now();
    let mut net = Net::new(8, 8, 1);
    eprintln!("identities {:?}", t0.elapsed());
    let others: Vec<String> = net.names[1..].to_vec();
    let d = net.engines[0].create_dgroup("team", &others, 1000).unwrap();
    net.settle(1000);
    eprintln!("setup {:?}", t0.elapsed());
    let t1 = std::time::Instant::now();
    net.engines[1].send(&d, TEXT_PLAIN, b"hello", 2000).unwrap();
    eprintln!("first send (commit importing 7) {:?}", t1.elapsed());
    let t1 = std::time::Instant::now();
    net.engines[1].send(&d, TEXT_PLAIN, b"hello", 2000).unwrap();
    eprintln!("second send {:?}", t1.elapsed());
    let t1 = std::time::Instant::now();
    net.settle(2000);
    eprintln!("deliver commit + 2 msgs to 7 {:?}", t1.elapsed());
    let t1 = std::time::Instant::now();
    net.engines[2].update(&d, 3000).unwrap();
    eprintln!("update {:?}", t1.elapsed());
    let t1 = std::time::Instant::now();
    net.settle(3000);
    eprintln!("deliver update {:?}", t1.elapsed());
    let t1 = std::time::Instant::now();
    for _ in 0..10 {
        net.engines[3].followed_groups().unwrap();
    }
    eprintln!("10 followed_groups {:?}", t1.elapsed());
}

fn three() -> (Net, dmls_client::engine::DGroupId) {
    team_of_three(Net::new(3, 4, 3))
}

/// Like [`three`], with each member's state in a file in `dir`, engines seeded from `seed`.
fn three_in(dir: &std::path::Path, seed: u64) -> (Net, DGroupId) {
    team_of_three(Net::with_files(3, 4, seed, dir))
}

/// m0 creates the DGroup "team" with m1 and m2 at time 1000; everyone joins.
fn team_of_three(mut net: Net) -> (Net, DGroupId) {
    let d = net.engines[0]
        .create_dgroup("team", &["m1".to_string(), "m2".to_string()], 1000)
        .unwrap();
    net.settle(1000);
    (net, d)
}

#[test]
fn commit_waits_for_the_psk_it_imports_and_is_retried_when_it_is_stored() {
    use dmls_client::engine::{Input, PskId, WaitReason, send_group_id};
    let (mut net, d) = three();
    // m1 updates (a commit in its group, Update proposals in the others).
    net.engines[1].update(&d, 2000).unwrap();
    net.drain_all(2000);
    let (to_m0, to_m2): (Vec<_>, Vec<_>) = net.pool.drain(..).partition(|p| p.to == 0);
    for p in to_m0 {
        net.engines[0].handle(p.input, 2000).unwrap();
    }
    // m0's next send commits first, importing m1's epoch 2.
    net.engines[0].send(&d, TEXT_PLAIN, b"x", 3000).unwrap();
    net.drain_all(3000);
    let from_m0: Vec<Input> = net
        .pool
        .drain(..)
        .filter(|p| p.to == 2)
        .map(|p| p.input)
        .collect();
    for m in from_m0 {
        net.engines[2].handle(m, 3000).unwrap();
    }
    let waiting = |net: &Net| {
        let st = net.engines[2].status(&d).unwrap();
        st.send_groups
            .into_iter()
            .find(|s| s.owner == "m0")
            .unwrap()
    };
    let m0 = waiting(&net);
    let want = PskId {
        epoch: 2,
        group_id: send_group_id(&d, "m1"),
    };
    assert_eq!(m0.epoch, Some(1));
    assert!(
        m0.waiting
            .iter()
            .any(|w| w.is_commit && w.waits_for == WaitReason::Psk(want)),
        "{:?}",
        m0.waiting
    );
    assert!(
        m0.waiting
            .iter()
            .any(|w| !w.is_commit && w.waits_for == WaitReason::Epoch(2)),
        "{:?}",
        m0.waiting
    );
    assert!(messages(&net, 2).is_empty());
    // m1's commit and proposals arrive: the waiting commit and message are processed.
    for p in to_m2 {
        let ev = net.engines[2].handle(p.input, 4000).unwrap();
        net.events[2].extend(ev);
    }
    let m0 = waiting(&net);
    assert_eq!(m0.epoch, Some(2));
    assert!(m0.waiting.is_empty(), "{:?}", m0.waiting);
    assert_eq!(messages(&net, 2), vec![b"x".to_vec()]);
}

#[test]
fn removal_propagates_and_the_removed_member_learns_it() {
    let (mut net, d) = three();
    net.engines[0].remove(&d, "m2", 2000).unwrap();
    net.settle(2000);
    assert!(
        net.events[2]
            .iter()
            .any(|e| matches!(e, Event::WeWereRemoved { by, .. } if by == "m0"))
    );
    assert!(
        net.events[1]
            .iter()
            .any(|e| matches!(e, Event::MemberRemoved { member, .. } if member == "m2"))
    );
    assert_eq!(
        net.engines[1].status(&d).unwrap().pending_removals,
        vec!["m2".to_string()]
    );
    assert_eq!(
        net.engines[1].commit_pending_removals(3000).unwrap(),
        vec![d]
    );
    net.settle(3000);
    for i in 0..2 {
        let st = net.engines[i].status(&d).unwrap();
        assert!(st.pending_removals.is_empty());
        for sg in st.send_groups.iter().filter(|s| s.owner != "m2") {
            let mut members = sg.members.clone();
            members.sort();
            assert_eq!(
                members,
                vec!["m0".to_string(), "m1".to_string()],
                "{} at m{i}",
                sg.owner
            );
        }
    }
    assert!(net.engines[2].dgroups().unwrap()[0].we_are_removed);
    assert!(net.engines[2].send(&d, TEXT_PLAIN, b"x", 4000).is_err());
    net.engines[1].send(&d, TEXT_PLAIN, b"after", 5000).unwrap();
    net.settle(5000);
    assert_eq!(messages(&net, 0), vec![b"after".to_vec()]);
    assert!(messages(&net, 2).is_empty());
}

#[test]
fn a_member_that_leaves_is_removed_by_the_others_and_reads_nothing_after() {
    use dmls_client::engine::{EngineError, Input, LEAVE_CONTENT_TYPE};
    let (mut net, d) = three();
    net.engines[1]
        .send(&d, TEXT_PLAIN, b"before", 1500)
        .unwrap();
    net.settle(1500);
    assert_eq!(messages(&net, 2), vec![b"before".to_vec()]);
    // The control content type cannot be sent as content.
    assert!(matches!(
        net.engines[2].send(&d, LEAVE_CONTENT_TYPE, b"", 1600),
        Err(EngineError::InvalidArgument(_))
    ));

    assert!(net.engines[2].leave(&d, 2000).unwrap());
    let summary = net.engines[2].dgroups().unwrap().remove(0);
    assert_eq!(summary.left_ms, Some(2000));
    assert!(summary.we_are_removed);
    assert!(net.engines[2].followed_groups().unwrap().is_empty());
    assert!(net.engines[2].status(&d).unwrap().send_groups.is_empty());
    assert!(matches!(
        net.engines[2].leave(&d, 2100),
        Err(EngineError::InvalidArgument(_))
    ));
    assert!(matches!(
        net.engines[2].send(&d, TEXT_PLAIN, b"x", 2100),
        Err(EngineError::NotReady(_))
    ));
    // The announcement reaches the others; what is sent to the leaver from now on is kept
    // aside (it follows no Send Group of the DGroup any more).
    let mut to_leaver = net.settle_holding(2000, |p| p.to == 2);
    for i in 0..2 {
        assert!(
            net.events[i]
                .iter()
                .any(|e| matches!(e, Event::MemberLeft { member, .. } if member == "m2")),
            "m{i}: {:?}",
            net.events[i]
        );
        // Not shown as a message.
        assert_eq!(messages(&net, i).len(), usize::from(i == 0));
        let st = net.engines[i].status(&d).unwrap();
        assert_eq!(st.summary.removed, vec!["m2".to_string()]);
        assert_eq!(st.pending_removals, vec!["m2".to_string()]);
    }
    // The others remove it from their Send Groups (their duties do after a batch of messages).
    for i in 0..2 {
        net.tick(i, 3000);
    }
    to_leaver.extend(net.settle_holding(3000, |p| p.to == 2));
    for i in 0..2 {
        let st = net.engines[i].status(&d).unwrap();
        assert!(st.pending_removals.is_empty());
        for sg in st.send_groups.iter().filter(|s| s.owner != "m2") {
            assert!(!sg.members.contains(&"m2".to_string()), "{sg:?} at m{i}");
        }
    }
    net.engines[0].send(&d, TEXT_PLAIN, b"after", 4000).unwrap();
    to_leaver.extend(net.settle_holding(4000, |p| p.to == 2));
    assert_eq!(messages(&net, 1), vec![b"after".to_vec()]);
    // Even if the relay hands the leaver what was sent after it left, it holds no state to
    // read it with: every group message is refused, nothing is shown.
    let group_messages: Vec<Input> = to_leaver
        .into_iter()
        .map(|p| p.input)
        .filter(|i| matches!(i, Input::GroupMessage { .. }))
        .collect();
    assert!(!group_messages.is_empty());
    for input in group_messages {
        let r = net.engines[2].handle(input, 5000);
        assert!(
            matches!(r, Err(EngineError::UnknownSendGroup { .. })),
            "{r:?}"
        );
    }
    assert_eq!(messages(&net, 2), vec![b"before".to_vec()]);
    // What it had received stays in its history.
    let history = net.engines[2].history(&d, 10).unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].body, b"before");
}

/// The names every member shows for `d`, with who set them.
fn names(net: &Net, d: &DGroupId) -> Vec<(String, Option<String>)> {
    net.engines
        .iter()
        .map(|e| {
            let s = e.status(d).unwrap().summary;
            (s.name, s.renamed_by)
        })
        .collect()
}

#[test]
fn concurrent_renames_end_with_the_same_name_everywhere() {
    use dmls_client::engine::{EngineError, MAX_NAME_BYTES, NAME_CONTENT_TYPE};
    let (mut net, d) = three();
    let team = ("team".to_string(), None);
    assert_eq!(
        names(&net, &d),
        vec![team.clone(), team.clone(), team.clone()]
    );
    // Refused names change nothing.
    for bad in ["", "  ", "a\tb", &"x".repeat(MAX_NAME_BYTES + 1)] {
        assert!(
            matches!(
                net.engines[1].rename(&d, bad, 1500),
                Err(EngineError::InvalidArgument(_))
            ),
            "{bad:?}"
        );
    }
    assert!(matches!(
        net.engines[1].send(&d, NAME_CONTENT_TYPE, b"", 1500),
        Err(EngineError::InvalidArgument(_))
    ));
    assert!(net.engines[1].outbox().unwrap().is_empty());
    // Two renames at once, each with clock 1: the greater client id wins, wherever it is
    // received first.
    net.engines[2].rename(&d, "beta", 2000).unwrap();
    net.engines[1].rename(&d, "alpha", 2000).unwrap();
    net.settle(2000);
    let beta = ("beta".to_string(), Some("m2".to_string()));
    assert_eq!(names(&net, &d), vec![beta.clone(), beta.clone(), beta]);
    for i in [0, 1] {
        assert!(
            net.events[i]
                .iter()
                .any(|e| matches!(e, Event::GroupRenamed { name, by, .. } if name == "beta" && by == "m2")),
            "m{i}"
        );
    }
    // A rename after one seen wins over it: its clock is greater.
    net.engines[0].rename(&d, "gamma", 3000).unwrap();
    net.settle(3000);
    let gamma = ("gamma".to_string(), Some("m0".to_string()));
    assert_eq!(names(&net, &d), vec![gamma.clone(), gamma.clone(), gamma]);
    // Not shown as a message.
    assert!(messages(&net, 1).is_empty());
}

#[test]
fn a_name_set_by_a_member_removed_meanwhile_reaches_those_who_dropped_its_message() {
    use dmls_client::engine::Input;
    let (mut net, d) = three();
    // m1 commits, and m2 does not see it yet.
    net.engines[1].update(&d, 2000).unwrap();
    let mut held = net.settle_holding(2000, |p| p.to == 2);
    // m1 renames in the epoch after that commit; m0 reads it, then removes m1.
    net.engines[1].rename(&d, "delta", 2100).unwrap();
    held.extend(net.settle_holding(2100, |p| p.to == 2));
    net.engines[0].remove(&d, "m1", 2200).unwrap();
    net.drain_all(2200);
    // m2 reads m0's removal of m1 first: it stops m1's Send Group at the epoch it holds, so it
    // drops m1's commit and rename, which are of later epochs.
    let (from_m0, others): (Vec<_>, Vec<_>) = net
        .pool
        .drain(..)
        .partition(|p| matches!(&p.input, Input::GroupMessage { owner, .. } if owner == "m0"));
    net.pool = others;
    for p in from_m0.into_iter().filter(|p| p.to == 2).chain(held) {
        let ev = net.engines[2].handle(p.input, 2300).unwrap();
        net.events[2].extend(ev);
    }
    // m0 sent the name again when it removed its setter: m2 has it.
    let delta = ("delta".to_string(), Some("m1".to_string()));
    assert_eq!(names(&net, &d)[0], delta);
    assert_eq!(names(&net, &d)[2], delta);
}

#[test]
fn update_policy_commits_before_a_send_when_the_last_update_is_too_old_or_used_too_often() {
    use dmls_client::engine::UpdatePolicy;
    let (mut net, d) = three();
    let own_epoch = |net: &Net| {
        let st = net.engines[0].status(&d).unwrap();
        st.send_groups
            .into_iter()
            .find(|s| s.owner == "m0")
            .unwrap()
            .epoch
            .unwrap()
    };
    net.engines[0].set_update_policy(UpdatePolicy {
        max_update_age_ms: 10_000,
        max_messages_per_update: 2,
        import_before_send: true,
    });
    // Nothing imported yet: the first send commits the imports of m1's and m2's epoch 1.
    net.engines[0].send(&d, TEXT_PLAIN, b"1", 2000).unwrap();
    assert_eq!(own_epoch(&net), 2);
    net.engines[0].send(&d, TEXT_PLAIN, b"2", 2001).unwrap();
    assert_eq!(own_epoch(&net), 2);
    // Two messages since the last update: commit first.
    net.engines[0].send(&d, TEXT_PLAIN, b"3", 2002).unwrap();
    assert_eq!(own_epoch(&net), 3);
    // Last update older than 10 s: commit first.
    net.engines[0].send(&d, TEXT_PLAIN, b"4", 20_000).unwrap();
    assert_eq!(own_epoch(&net), 4);
    net.settle(20_000);
    assert_eq!(messages(&net, 1).len(), 4);
    assert_eq!(messages(&net, 2).len(), 4);
    assert!(net.engines[0].status(&d).unwrap().unimported.is_empty());
}

/// m0 creates a DGroup with m1 and m2 while m2 has no key packages; returns m2's stock.
fn trio_without_m2_key_packages(seed: u64) -> (Net, DGroupId, Vec<Vec<u8>>) {
    let mut net = Net::new(3, 4, seed);
    let spare = std::mem::take(&mut net.stock[2]);
    let d = net.engines[0]
        .create_dgroup("team", &["m1".to_string(), "m2".to_string()], 1000)
        .unwrap();
    net.settle(1000);
    (net, d, spare)
}

#[test]
fn a_member_without_key_packages_is_added_late_once_it_has_some() {
    use dmls_client::engine::send_group_id;
    // m2 has no key package when m0 creates the DGroup (and when m1 joins).
    let (mut net, d, spare) = trio_without_m2_key_packages(11);
    for i in 0..2 {
        assert!(
            net.events[i].iter().any(|e| matches!(
                e,
                Event::KeyPackagesMissing { client_ids, .. } if client_ids == &["m2".to_string()]
            )),
            "m{i}: {:?}",
            net.events[i]
        );
        let st = net.engines[i].status(&d).unwrap();
        for sg in st.send_groups.iter().filter(|s| s.owner != "m2") {
            assert!(!sg.members.contains(&"m2".to_string()), "{sg:?}");
        }
    }
    assert!(net.engines[2].dgroups().unwrap().is_empty());
    // Messages before the late add are not for m2: the relay group lists only the members
    // that were added, so nothing is delivered to it.
    net.engines[0]
        .send(&d, TEXT_PLAIN, b"before", 1500)
        .unwrap();
    assert_eq!(net.settle_leaving(1500), 0, "nothing of m0's is for m2");
    // Retrying with still no key package: claims again, adds nobody, reports again.
    assert_eq!(net.engines[0].retry_missing_members().unwrap(), vec![d]);
    // A claim is pending: no second one.
    assert!(net.engines[0].retry_missing_members().unwrap().is_empty());
    let before = net.events[0].len();
    assert_eq!(net.settle_leaving(1600), 0);
    assert!(
        net.events[0][before..]
            .iter()
            .any(|e| matches!(e, Event::KeyPackagesMissing { .. }))
    );
    // m2 uploads key packages; m0 and m1 add it late.
    net.stock[2] = spare;
    for i in 0..3 {
        let claimed = net.engines[i].retry_missing_members().unwrap();
        assert_eq!(claimed, if i < 2 { vec![d] } else { vec![] }, "m{i}");
    }
    net.settle(2000);
    // m2 owes nothing from before it was added (m0's epochs 1 and 2); m1 owes epoch 2.
    assert_eq!(behind(&net, 0, &d, "m2"), None);
    assert_eq!(behind(&net, 0, &d, "m1"), Some(1500));
    let mut names = vec!["m0".to_string(), "m1".to_string(), "m2".to_string()];
    names.sort();
    for i in 0..3 {
        let st = net.engines[i].status(&d).unwrap();
        for sg in &st.send_groups {
            assert!(sg.joined, "m{i} not in {}'s group", sg.owner);
            let mut members = sg.members.clone();
            members.sort();
            assert_eq!(members, names, "{} at m{i}", sg.owner);
            assert!(
                sg.waiting.is_empty(),
                "{} at m{i}: {:?}",
                sg.owner,
                sg.waiting
            );
        }
    }
    // Nothing is missing any more.
    for i in 0..3 {
        assert!(net.engines[i].retry_missing_members().unwrap().is_empty());
    }
    // Per member: (owner, epoch, epoch authenticator) of every Send Group.
    type Auths = Vec<Vec<(String, Option<u64>, Option<String>)>>;
    let auths = |net: &Net| -> Auths {
        (0..3)
            .map(|i| {
                net.engines[i]
                    .status(&d)
                    .unwrap()
                    .send_groups
                    .into_iter()
                    .map(|s| (s.owner, s.epoch, s.epoch_authenticator))
                    .collect()
            })
            .collect()
    };
    let a = auths(&net);
    assert_eq!(a[0], a[1]);
    assert_eq!(a[0], a[2]);
    let m0 = a[0].iter().find(|s| s.0 == "m0").unwrap();
    assert_eq!(m0.1, Some(3), "m0's group: INIT, a send, the late add");
    // m2 joined m0's group at the late-add epoch.
    let st2 = net.engines[2].status(&d).unwrap();
    let g0 = st2.send_groups.iter().find(|s| s.owner == "m0").unwrap();
    assert_eq!(g0.group_id, hex::encode(send_group_id(&d, "m0")));
    // The owner sends afterwards (committing its imports first): m2 reads it.
    net.engines[0].send(&d, TEXT_PLAIN, b"after", 3000).unwrap();
    net.engines[1]
        .send(&d, TEXT_PLAIN, b"from m1", 3001)
        .unwrap();
    net.engines[2]
        .send(&d, TEXT_PLAIN, b"from m2", 3002)
        .unwrap();
    net.settle(3000);
    assert_eq!(
        messages(&net, 2),
        vec![b"after".to_vec(), b"from m1".to_vec()]
    );
    assert_eq!(
        messages(&net, 1),
        vec![b"before".to_vec(), b"after".to_vec(), b"from m2".to_vec()]
    );
    assert_eq!(
        messages(&net, 0),
        vec![b"from m1".to_vec(), b"from m2".to_vec()]
    );
    let a = auths(&net);
    assert_eq!(a[0], a[1]);
    assert_eq!(a[0], a[2]);
}

#[test]
fn an_owner_does_not_import_an_epoch_a_late_added_member_cannot_hold() {
    let (mut net, d, spare) = trio_without_m2_key_packages(12);
    net.stock[2] = spare;
    // Only m0 adds m2 for now; m1's group still lacks it.
    assert_eq!(net.engines[0].retry_missing_members().unwrap(), vec![d]);
    net.settle(2000);
    net.engines[1].update(&d, 2500).unwrap();
    net.settle(2500);
    // m1's epochs cannot be imported into m0's group while m2 is not in m1's group.
    let st = net.engines[0].status(&d).unwrap();
    assert!(
        st.unimported
            .iter()
            .all(|p| p.group_id != dmls_client::engine::send_group_id(&d, "m1")),
        "{:?}",
        st.unimported
    );
    net.engines[0].send(&d, TEXT_PLAIN, b"one", 3000).unwrap();
    net.settle(3000);
    assert_eq!(messages(&net, 2), vec![b"one".to_vec()]);
    // Once m1 added m2 too, m0 imports m1's latest epoch again.
    assert_eq!(net.engines[1].retry_missing_members().unwrap(), vec![d]);
    net.settle(4000);
    let st = net.engines[0].status(&d).unwrap();
    assert!(
        st.unimported
            .iter()
            .any(|p| p.group_id == dmls_client::engine::send_group_id(&d, "m1")),
        "{:?}",
        st.unimported
    );
    net.engines[0].send(&d, TEXT_PLAIN, b"two", 5000).unwrap();
    net.settle(5000);
    assert_eq!(messages(&net, 2), vec![b"one".to_vec(), b"two".to_vec()]);
    assert!(net.engines[0].status(&d).unwrap().unimported.is_empty());
}

/// In which order B (m2) sees A's commit, the removal of X and X's update commit.
#[derive(Debug, Clone, Copy)]
enum RaceOrder {
    /// Removal, X's update commit (kept: beyond the stop epoch), then A's commit.
    RemovalXThenA,
    /// Removal, A's commit (raises the limit), then X's update commit.
    RemovalAThenX,
    /// A's commit (waits for the PSK), removal (raises the limit at once), X's commit.
    ABeforeRemoval,
}

/// docs/PROTOCOL.md "Removal race": A (m1) imports a later epoch of removed X's (m3) Send
/// Group before it learns of the removal; B (m2) learned of it (from the remover m0) before
/// it processed that epoch of X's group. B still merges A's commit, gets X's later epoch only
/// for its PSK, and neither imports it nor shows X's later messages.
#[test]
fn a_commit_importing_a_removed_members_later_epoch_is_still_merged() {
    use crate::common::Delivery;
    use dmls_client::engine::{PskId, WaitReason, send_group_id};

    fn feed(net: &mut Net, ds: Vec<Delivery>, now_ms: u64) {
        for d in ds {
            let ev = net.engines[d.to].handle(d.input, now_ms).unwrap();
            net.events[d.to].extend(ev);
        }
    }
    fn epoch_of(net: &Net, i: usize, d: &dmls_client::engine::DGroupId, owner: &str) -> u64 {
        let st = net.engines[i].status(d).unwrap();
        st.send_groups
            .iter()
            .find(|s| s.owner == owner)
            .unwrap()
            .epoch
            .unwrap()
    }

    for (seed, order) in [
        (41, RaceOrder::RemovalXThenA),
        (42, RaceOrder::RemovalAThenX),
        (43, RaceOrder::ABeforeRemoval),
    ] {
        let mut net = Net::new(4, 6, seed);
        let d = net.engines[0]
            .create_dgroup(
                "team",
                &["m1".to_string(), "m2".to_string(), "m3".to_string()],
                1000,
            )
            .unwrap();
        net.settle(1000);
        let gx = send_group_id(&d, "m3");
        // X updates and then sends a message in its new epoch.
        net.engines[3].update(&d, 2000).unwrap();
        net.engines[3].send(&d, TEXT_PLAIN, b"late", 2100).unwrap();
        net.drain_all(2100);
        let (x_to_a, rest): (Vec<_>, Vec<_>) = net.pool.drain(..).partition(|p| p.to == 1);
        let (x_to_b, x_rest): (Vec<_>, Vec<_>) = rest.into_iter().partition(|p| p.to == 2);
        // A processes it and imports X's new epoch in its next commit.
        feed(&mut net, x_to_a, 2200);
        let ex = epoch_of(&net, 1, &d, "m3");
        let want = PskId {
            epoch: ex,
            group_id: gx,
        };
        assert!(
            net.engines[1]
                .status(&d)
                .unwrap()
                .unimported
                .contains(&want),
            "{order:?}"
        );
        net.engines[1].update(&d, 3000).unwrap();
        net.drain_all(3000);
        let ea = epoch_of(&net, 1, &d, "m1");
        let (a_to_b, a_rest): (Vec<_>, Vec<_>) = net.pool.drain(..).partition(|p| p.to == 2);
        let stop = epoch_of(&net, 2, &d, "m3");
        assert!(stop < ex);
        assert!(epoch_of(&net, 2, &d, "m1") < ea);
        let mut a_to_b = Some(a_to_b);
        if let RaceOrder::ABeforeRemoval = order {
            feed(&mut net, a_to_b.take().unwrap(), 3100);
            let st = net.engines[2].status(&d).unwrap();
            let a = st.send_groups.iter().find(|s| s.owner == "m1").unwrap();
            assert!(
                a.waiting
                    .iter()
                    .any(|w| w.is_commit && w.waits_for == WaitReason::Psk(want)),
                "{:?}",
                a.waiting
            );
        }
        // The creator removes X; B learns it before it sees X's update.
        net.engines[0].remove(&d, "m3", 4000).unwrap();
        net.drain_all(4000);
        let (r_to_b, r_rest): (Vec<_>, Vec<_>) = net.pool.drain(..).partition(|p| p.to == 2);
        feed(&mut net, r_to_b, 4100);
        let st = net.engines[2].status(&d).unwrap();
        assert_eq!(st.summary.removed, vec!["m3".to_string()], "{order:?}");
        assert_eq!(epoch_of(&net, 2, &d, "m3"), stop);
        match order {
            RaceOrder::RemovalXThenA => {
                feed(&mut net, x_to_b, 5000);
                let st = net.engines[2].status(&d).unwrap();
                let x = st.send_groups.iter().find(|s| s.owner == "m3").unwrap();
                assert_eq!(x.epoch, Some(stop), "X's commit is kept, not processed");
                assert!(
                    x.waiting
                        .iter()
                        .any(|w| w.is_commit && w.waits_for == WaitReason::Stopped),
                    "{:?}",
                    x.waiting
                );
                feed(&mut net, a_to_b.take().unwrap(), 5100);
            }
            RaceOrder::RemovalAThenX => {
                feed(&mut net, a_to_b.take().unwrap(), 5000);
                feed(&mut net, x_to_b, 5100);
            }
            RaceOrder::ABeforeRemoval => feed(&mut net, x_to_b, 5100),
        }
        // B merged A's commit: X's later epoch was processed for its PSK alone.
        let st = net.engines[2].status(&d).unwrap();
        assert_eq!(epoch_of(&net, 2, &d, "m1"), ea, "{order:?}");
        assert_eq!(epoch_of(&net, 2, &d, "m3"), ex, "{order:?}");
        for sg in &st.send_groups {
            assert!(
                !sg.waiting
                    .iter()
                    .any(|w| matches!(w.waits_for, WaitReason::Psk(_))),
                "{order:?}: {} {:?}",
                sg.owner,
                sg.waiting
            );
        }
        // ...and does not import it, nor act on it.
        assert!(
            st.unimported.iter().all(|p| p.group_id != gx),
            "{order:?}: {:?}",
            st.unimported
        );
        assert!(!messages(&net, 2).contains(&b"late".to_vec()), "{order:?}");
        assert!(messages(&net, 1).contains(&b"late".to_vec()), "{order:?}");
        assert!(
            !net.events[2].iter().any(|e| matches!(
                e,
                Event::SendGroupAdvanced { owner, epoch, .. } if owner == "m3" && *epoch == ex
            )),
            "{order:?}"
        );
        // Everything else arrives; the others remove X too.
        net.pool.extend(x_rest);
        net.pool.extend(a_rest);
        net.pool.extend(r_rest);
        net.settle(6000);
        for i in 1..3 {
            net.engines[i].commit_pending_removals(7000).unwrap();
        }
        net.settle(7000);
        net.engines[2].send(&d, TEXT_PLAIN, b"after", 8000).unwrap();
        net.settle(8000);
        let sts: Vec<_> = (0..3).map(|i| net.engines[i].status(&d).unwrap()).collect();
        for owner in ["m0", "m1", "m2"] {
            let auths: Vec<_> = sts
                .iter()
                .map(|st| {
                    let sg = st.send_groups.iter().find(|s| s.owner == owner).unwrap();
                    assert!(
                        !sg.members.contains(&"m3".to_string()),
                        "{order:?}: {owner}"
                    );
                    assert!(
                        !sg.waiting
                            .iter()
                            .any(|w| matches!(w.waits_for, WaitReason::Psk(_))),
                        "{order:?}: {owner} {:?}",
                        sg.waiting
                    );
                    sg.epoch_authenticator.clone().unwrap()
                })
                .collect();
            assert!(
                auths.iter().all(|a| *a == auths[0]),
                "{order:?}: {owner} {auths:?}"
            );
        }
        for (i, st) in sts.iter().enumerate() {
            assert!(st.pending_removals.is_empty(), "{order:?} m{i}");
            assert!(
                st.unimported.iter().all(|p| p.group_id != gx),
                "{order:?} m{i}: {:?}",
                st.unimported
            );
        }
        assert_eq!(messages(&net, 0).last(), Some(&b"after".to_vec()));
        assert!(!messages(&net, 2).contains(&b"late".to_vec()), "{order:?}");
    }
}

#[test]
fn outbox_items_marked_done_together_leave_the_rest_in_order() {
    let (mut net, d) = three();
    // An update queues the commit and one leaf refresh per other Send Group.
    net.engines[0].update(&d, 2000).unwrap();
    let items = net.engines[0].outbox().unwrap();
    assert!(items.len() >= 3, "expected a commit and two leaf refreshes");
    let ids: Vec<u64> = items.iter().map(|i| i.id).collect();
    // The first two marked done in one call; an unknown id and a repeat change nothing.
    net.engines[0]
        .outbox_done_many(&[ids[0], ids[1], ids[1], u64::MAX])
        .unwrap();
    let left: Vec<u64> = net.engines[0]
        .outbox()
        .unwrap()
        .iter()
        .map(|i| i.id)
        .collect();
    assert_eq!(left, ids[2..].to_vec());
    net.engines[0].outbox_done_many(&[]).unwrap();
    assert_eq!(net.engines[0].outbox().unwrap().len(), ids.len() - 2);
}

/// m1 updates (its leaf refresh reaches m0's group), then m0 updates, committing that leaf
/// refresh. Returns m2's deliveries from m1 and from m0, in posting order.
fn refresh_committed_by_m0() -> (Net, DGroupId, Vec<usize>, Vec<usize>) {
    let (mut net, d) = three();
    net.engines[1].update(&d, 2000).unwrap();
    net.drain_all(2000);
    let to_m0: Vec<usize> = (0..net.pool.len())
        .filter(|&k| net.pool[k].to == 0)
        .collect();
    net.deliver_batch(&to_m0, 2000).unwrap();
    let from_m1 = net.pool.len();
    net.engines[0].update(&d, 3000).unwrap();
    net.drain_all(3000);
    let pick = |net: &Net, r: std::ops::Range<usize>| -> Vec<usize> {
        r.filter(|&k| net.pool[k].to == 2).collect()
    };
    let (a, b) = (pick(&net, 0..from_m1), pick(&net, from_m1..net.pool.len()));
    (net, d, a, b)
}

/// Whether every member holds the same epoch and epoch authenticator of every Send Group.
fn all_agree(net: &Net, d: &DGroupId) -> bool {
    let view = |i: usize| {
        net.engines[i]
            .status(d)
            .unwrap()
            .send_groups
            .into_iter()
            .map(|s| (s.owner, s.epoch, s.epoch_authenticator))
            .collect::<Vec<_>>()
    };
    (1..3).all(|i| view(i) == view(0))
}

/// The waiting messages m2 holds in `owner`'s Send Group.
fn waiting_in(net: &Net, d: &DGroupId, owner: &str) -> Vec<dmls_client::engine::WaitingMessage> {
    let st = net.engines[2].status(d).unwrap();
    st.send_groups
        .into_iter()
        .find(|s| s.owner == owner)
        .unwrap()
        .waiting
}

#[test]
fn a_commit_uses_a_deferred_leaf_refresh_received_in_the_same_batch() {
    use dmls_client::engine::WaitReason;
    let (mut net, d, from_m1, from_m0) = refresh_committed_by_m0();
    let before = net.engines[2].counters().processed;
    // One batch: m1's commit, its refreshes in m0's and m2's groups, m0's commit (which
    // references m1's refresh in m0's group), m0's refreshes in m1's and m2's groups.
    let all: Vec<usize> = from_m1.iter().chain(&from_m0).copied().collect();
    assert_eq!(all.len(), 6);
    net.deliver_batch(&all, 4000).unwrap();
    // Everything but m0's refresh in m1's group was processed, the deferred refresh in m0's
    // group included: m0's commit could not have been merged without it.
    assert_eq!(net.engines[2].counters().processed - before, 5);
    assert!(waiting_in(&net, &d, "m0").is_empty());
    // m0's refresh in m1's group is still deferred (m1 has not committed it): written to
    // the database at the end of the batch, it survives reopening.
    let w = waiting_in(&net, &d, "m1");
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(!w[0].is_commit && w[0].waits_for == WaitReason::Commit(2));
    net.settle(5000);
    assert!(all_agree(&net, &d));
}

#[test]
fn a_commit_uses_a_deferred_leaf_refresh_stored_by_an_earlier_batch() {
    use dmls_client::engine::WaitReason;
    let (mut net, d, from_m1, from_m0) = refresh_committed_by_m0();
    let before = net.engines[2].counters().processed;
    net.deliver_batch(&from_m1, 4000).unwrap();
    // m1's refresh in m0's group waits for m0's commit of epoch 1, in the database.
    let w = waiting_in(&net, &d, "m0");
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(!w[0].is_commit && w[0].waits_for == WaitReason::Commit(1));
    let from_m0: Vec<usize> = from_m0.iter().map(|k| k - from_m1.len()).collect();
    net.deliver_batch(&from_m0, 5000).unwrap();
    assert_eq!(net.engines[2].counters().processed - before, 5);
    assert!(waiting_in(&net, &d, "m0").is_empty());
    net.settle(6000);
    assert!(all_agree(&net, &d));
}

#[test]
fn a_commit_that_arrives_before_the_leaf_refresh_it_references_waits_for_it() {
    let (mut net, d, from_m1, from_m0) = refresh_committed_by_m0();
    let before = net.engines[2].counters().processed;
    // m0's messages first: its commit waits for the PSK of m1's epoch 2, then (once m1's
    // commit is in) for m1's refresh in m0's group, which comes last.
    let refresh_in_g0 = from_m1[1];
    let mut order: Vec<usize> = from_m0.clone();
    order.extend(from_m1.iter().filter(|&&k| k != refresh_in_g0));
    order.push(refresh_in_g0);
    net.deliver_batch(&order, 4000).unwrap();
    assert_eq!(net.engines[2].counters().processed - before, 5);
    assert!(waiting_in(&net, &d, "m0").is_empty());
    net.settle(5000);
    assert!(all_agree(&net, &d));
}

#[test]
fn psks_are_deleted_once_every_other_member_imported_a_newer_epoch() {
    use dmls_client::engine::send_group_id;
    let dir = tempfile::tempdir().unwrap();
    let (mut net, d) = three_in(dir.path(), 21);
    let g0 = send_group_id(&d, "m0");
    // Epochs of m0's Send Group whose PSK member `i` still stores.
    let stored = |i: usize| -> Vec<i64> {
        let db = rusqlite::Connection::open(dir.path().join(format!("m{i}.db"))).unwrap();
        let mut st = db
            .prepare("SELECT epoch FROM dmls_psk WHERE group_id = ?1 ORDER BY epoch")
            .unwrap();
        st.query_map([g0.as_slice()], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    let holders = |net: &Net, i: usize| -> Vec<String> {
        let st = net.engines[i].status(&d).unwrap();
        let g = st
            .send_groups
            .into_iter()
            .find(|g| g.owner == "m0")
            .unwrap();
        g.psk_deletion_holders
    };
    // m0 advances its group twice; nobody imported anything of it yet.
    for t in [2000, 3000] {
        net.engines[0].update(&d, t).unwrap();
        net.settle(t);
    }
    for i in 0..3 {
        assert_eq!(stored(i), vec![1, 2, 3], "member {i}");
        assert_eq!(holders(&net, i), vec!["m1", "m2"], "member {i}");
    }
    // m1 imports epoch 3: m2 still holds back deletion.
    net.engines[1].update(&d, 4000).unwrap();
    net.settle(4000);
    for i in 0..3 {
        assert_eq!(stored(i), vec![1, 2, 3], "member {i}");
        assert_eq!(holders(&net, i), vec!["m2"], "member {i}");
    }
    // m2 imports it too: every member deletes the PSKs of epochs 1 and 2 and keeps the latest.
    net.engines[2].update(&d, 5000).unwrap();
    net.settle(5000);
    for i in 0..3 {
        assert_eq!(stored(i), vec![3], "member {i}");
        assert!(holders(&net, i).is_empty(), "member {i}");
    }
}

const DAY: u64 = 24 * 60 * 60 * 1000;

/// The status entry of `owner`'s Send Group at member `i`.
fn send_group_at(
    net: &Net,
    i: usize,
    d: &DGroupId,
    owner: &str,
) -> dmls_client::engine::SendGroupStatus {
    net.engines[i]
        .status(d)
        .unwrap()
        .send_groups
        .into_iter()
        .find(|s| s.owner == owner)
        .unwrap()
}

/// The members named by `events`, all [`Event::MemberEvicted`], sorted.
fn evicted_members(events: Vec<Event>) -> Vec<String> {
    let mut who: Vec<String> = events
        .into_iter()
        .map(|e| match e {
            Event::MemberEvicted { member, .. } => member,
            e => panic!("{e:?}"),
        })
        .collect();
    who.sort();
    who
}

/// `owner`'s [`SendGroupStatus::behind_since_ms`] at member `i`.
fn behind(net: &Net, i: usize, d: &DGroupId, owner: &str) -> Option<u64> {
    send_group_at(net, i, d, owner).behind_since_ms
}

#[test]
fn members_behind_past_the_threshold_are_evicted_and_everyone_removes_them() {
    use dmls_client::engine::{DEFAULT_EVICTION_THRESHOLD_MS, EngineError};
    let (mut net, d) = three();
    // A quiet group: nobody is behind, so nobody is evicted, however long it stays quiet.
    for o in ["m0", "m1", "m2"] {
        assert_eq!(behind(&net, 0, &d, o), None, "{o}");
    }
    let none = net.engines[0]
        .evict_silent_members(1000 + 100 * DAY, DEFAULT_EVICTION_THRESHOLD_MS)
        .unwrap();
    assert!(none.is_empty(), "{none:?}");
    assert!(net.engines[0].outbox().unwrap().is_empty());

    // Day 100: m0 updates; m1 and m2 now owe its epoch. Day 110: m1 commits, importing it.
    let (t1, t2) = (100 * DAY, 110 * DAY);
    net.engines[0].update(&d, t1).unwrap();
    net.settle(t1);
    net.engines[1].update(&d, t2).unwrap();
    net.settle(t2);
    assert_eq!(behind(&net, 0, &d, "m1"), None);
    assert_eq!(behind(&net, 0, &d, "m2"), Some(t1));
    // We owe m1's new epoch, but only its latest: that holds back no deletion.
    assert_eq!(behind(&net, 0, &d, "m0"), None);

    // Day 129: nobody has been behind for 30 days; nothing changes.
    let before = net.engines[0].status(&d).unwrap();
    let none = net.engines[0]
        .evict_silent_members(t1 + 29 * DAY, DEFAULT_EVICTION_THRESHOLD_MS)
        .unwrap();
    assert!(none.is_empty(), "{none:?}");
    assert!(net.engines[0].outbox().unwrap().is_empty());
    assert_eq!(net.engines[0].status(&d).unwrap(), before);

    // A zero threshold is refused and changes nothing either.
    assert!(matches!(
        net.engines[0].evict_silent_members(t1 + 31 * DAY, 0),
        Err(EngineError::InvalidArgument(_))
    ));
    assert_eq!(net.engines[0].status(&d).unwrap(), before);

    // Day 131: m2, behind since day 100, is evicted; m1 is not.
    let now = t1 + 31 * DAY;
    let evicted = net.engines[0]
        .evict_silent_members(now, DEFAULT_EVICTION_THRESHOLD_MS)
        .unwrap();
    assert_eq!(
        evicted,
        vec![Event::MemberEvicted {
            dgroup: d,
            member: "m2".into(),
            behind_since_ms: t1,
        }]
    );
    assert_eq!(
        send_group_at(&net, 0, &d, "m0").members,
        vec!["m0".to_string(), "m1".to_string()]
    );
    net.settle(now);
    assert!(
        net.events[2]
            .iter()
            .any(|e| matches!(e, Event::WeWereRemoved { by, .. } if by == "m0")),
        "{:?}",
        net.events[2]
    );
    assert!(net.events[1].iter().any(
        |e| matches!(e, Event::MemberRemoved { member, by, .. } if member == "m2" && by == "m0")
    ));
    // m1 removes m2 from its own Send Group in its next commit.
    assert_eq!(
        net.engines[1].commit_pending_removals(now).unwrap(),
        vec![d]
    );
    net.settle(now);
    for i in 0..2 {
        for owner in ["m0", "m1"] {
            let mut members = send_group_at(&net, i, &d, owner).members;
            members.sort();
            assert_eq!(
                members,
                vec!["m0".to_string(), "m1".to_string()],
                "{owner} at m{i}"
            );
        }
    }
    // m1's removal commit imported m0's eviction commit: nobody left is behind.
    assert_eq!(behind(&net, 0, &d, "m1"), None);
    let again = net.engines[0]
        .evict_silent_members(t1 + 90 * DAY, DEFAULT_EVICTION_THRESHOLD_MS)
        .unwrap();
    assert!(again.is_empty(), "{again:?}");
}

#[test]
fn a_member_that_only_reads_acknowledges_overdue_updates_and_is_not_evicted() {
    use dmls_client::engine::{DEFAULT_ACK_DEADLINE_MS, DEFAULT_EVICTION_THRESHOLD_MS};
    let (mut net, d) = three();
    let t1 = 10 * DAY;
    net.engines[0].update(&d, t1).unwrap();
    net.settle(t1);
    assert_eq!(behind(&net, 1, &d, "m1"), Some(t1));
    // Not overdue yet: nothing happens.
    assert!(
        net.engines[1]
            .acknowledge_overdue(t1 + 6 * DAY, DEFAULT_ACK_DEADLINE_MS)
            .unwrap()
            .is_empty()
    );
    assert!(net.engines[1].outbox().unwrap().is_empty());
    // Overdue: m1 commits, importing m0's update, once.
    assert_eq!(
        net.engines[1]
            .acknowledge_overdue(t1 + 8 * DAY, DEFAULT_ACK_DEADLINE_MS)
            .unwrap(),
        vec![d]
    );
    assert!(
        net.engines[1]
            .acknowledge_overdue(t1 + 9 * DAY, DEFAULT_ACK_DEADLINE_MS)
            .unwrap()
            .is_empty()
    );
    net.settle(t1 + 8 * DAY);
    assert_eq!(behind(&net, 0, &d, "m1"), None);
    // m2, which did not acknowledge, is evicted; m1 is not.
    let evicted = net.engines[0]
        .evict_silent_members(t1 + 31 * DAY, DEFAULT_EVICTION_THRESHOLD_MS)
        .unwrap();
    assert_eq!(evicted_members(evicted), vec!["m2".to_string()]);
}

#[test]
fn psks_of_databases_without_times_are_counted_from_the_first_check() {
    use dmls_client::engine::DEFAULT_EVICTION_THRESHOLD_MS;
    let dir = tempfile::tempdir().unwrap();
    let (mut net, d) = three_in(dir.path(), 7);
    net.engines[0].update(&d, 2000).unwrap();
    net.settle(2000);
    assert_eq!(behind(&net, 0, &d, "m2"), Some(2000));
    // As an older version left it: no times.
    {
        let conn = rusqlite::Connection::open(dir.path().join("m0.db")).unwrap();
        conn.execute("UPDATE dmls_psk SET stored_ms = NULL", [])
            .unwrap();
    }
    assert_eq!(behind(&net, 0, &d, "m2"), None);
    // The first check, far later, starts the clock instead of evicting.
    let first = 100 * DAY;
    assert!(
        net.engines[0]
            .evict_silent_members(first, DEFAULT_EVICTION_THRESHOLD_MS)
            .unwrap()
            .is_empty()
    );
    assert_eq!(behind(&net, 0, &d, "m2"), Some(first));
    let evicted = net.engines[0]
        .evict_silent_members(first + 30 * DAY, DEFAULT_EVICTION_THRESHOLD_MS)
        .unwrap();
    assert_eq!(
        evicted_members(evicted),
        vec!["m1".to_string(), "m2".to_string()]
    );
}

#[test]
fn a_removed_members_group_is_closed_once_every_other_send_group_dropped_it() {
    use dmls_client::engine::WaitReason;
    let (mut net, d) = three();
    net.engines[0].remove(&d, "m2", 2000).unwrap();
    net.drain_all(2000);
    // m1 learns of the removal; m2 does not yet, and updates.
    net.deliver_to(1, 2100);
    net.engines[2].update(&d, 2200).unwrap();
    net.drain(2, 2200);
    net.deliver_to(1, 2300);
    // m2's commit beyond the epoch m1 stopped at is kept: a commit of m0 might import it.
    let kept = send_group_at(&net, 1, &d, "m2").waiting;
    assert!(
        kept.iter()
            .any(|w| w.is_commit && w.waits_for == WaitReason::Stopped),
        "{kept:?}"
    );
    // Once m1 removed m2 from its own Send Group too, no member can import m2's epochs:
    // m1 deletes what it kept, and keeps nothing m2 sends later.
    assert_eq!(
        net.engines[1].commit_pending_removals(2400).unwrap(),
        vec![d]
    );
    assert!(send_group_at(&net, 1, &d, "m2").waiting.is_empty());
    net.engines[2].update(&d, 2500).unwrap();
    net.drain(2, 2500);
    net.deliver_to(1, 2600);
    assert!(send_group_at(&net, 1, &d, "m2").waiting.is_empty());
    // m0 keeps m2's commits until it merged m1's removal commit, then closes the group too.
    net.settle(3000);
    assert!(send_group_at(&net, 0, &d, "m2").waiting.is_empty());
    assert_eq!(
        net.engines[0].status(&d).unwrap().summary.removed,
        vec!["m2".to_string()]
    );
    // The remaining members still talk.
    net.engines[1]
        .send(&d, TEXT_PLAIN, b"still here", 4000)
        .unwrap();
    net.settle(4000);
    assert_eq!(messages(&net, 0), vec![b"still here".to_vec()]);
}

#[test]
fn a_commit_importing_an_epoch_of_a_removed_member_we_never_joined_is_merged_once_its_welcome_comes()
 {
    use dmls_client::engine::{Input, PskId, WaitReason, send_group_id};
    // m3 (X) is removed; m2 (B) has not processed X's Welcome when it learns of the removal,
    // while m1 (A) imported a later epoch of X's group before it learned.
    let mut net = Net::new(4, 6, 51);
    let d = net.engines[0]
        .create_dgroup(
            "team",
            &["m1".to_string(), "m2".to_string(), "m3".to_string()],
            1000,
        )
        .unwrap();
    let x_welcome_to_b = |p: &crate::common::Delivery| {
        p.to == 2 && matches!(&p.input, Input::Welcome { from, .. } if from == "m3")
    };
    let mut held = net.settle_holding(1000, x_welcome_to_b);
    assert_eq!(held.len(), 1);
    assert!(!send_group_at(&net, 2, &d, "m3").joined);
    // X updates; everyone gets it (B keeps it until it joins X's group).
    net.engines[3].update(&d, 2000).unwrap();
    held.extend(net.settle_holding(2000, x_welcome_to_b));
    let ex = send_group_at(&net, 1, &d, "m3").epoch.unwrap();
    // A imports X's new epoch; its commit does not reach B yet.
    net.engines[1].update(&d, 3000).unwrap();
    net.drain_all(3000);
    let (a_to_b, rest): (Vec<_>, Vec<_>) = net.pool.drain(..).partition(|p| p.to == 2);
    net.pool = rest;
    // The creator removes X; B learns it, then gets A's commit, which waits for X's epoch.
    net.engines[0].remove(&d, "m3", 4000).unwrap();
    net.drain_all(4000);
    let (r_to_b, rest): (Vec<_>, Vec<_>) = net.pool.drain(..).partition(|p| p.to == 2);
    net.pool = rest;
    for p in r_to_b.into_iter().chain(a_to_b) {
        let ev = net.engines[2].handle(p.input, 4100).unwrap();
        net.events[2].extend(ev);
    }
    let want = PskId {
        epoch: ex,
        group_id: send_group_id(&d, "m3"),
    };
    let a = send_group_at(&net, 2, &d, "m1");
    assert!(
        a.waiting
            .iter()
            .any(|w| w.is_commit && w.waits_for == WaitReason::Psk(want)),
        "{:?}",
        a.waiting
    );
    // X's Welcome finally arrives: B joins X's group only to reach that epoch, and merges
    // A's commit; it shows nothing of X.
    for p in held {
        let ev = net.engines[2].handle(p.input, 5000).unwrap();
        net.events[2].extend(ev);
    }
    let a = send_group_at(&net, 2, &d, "m1");
    assert_eq!(a.epoch, send_group_at(&net, 1, &d, "m1").epoch);
    assert!(
        !a.waiting
            .iter()
            .any(|w| matches!(w.waits_for, WaitReason::Psk(_))),
        "{:?}",
        a.waiting
    );
    assert_eq!(send_group_at(&net, 2, &d, "m3").epoch, Some(ex));
    assert!(
        !net.events[2].iter().any(|e| matches!(
            e,
            Event::JoinedSendGroup { owner, .. } | Event::SendGroupAdvanced { owner, .. } if owner == "m3"
        )),
        "{:?}",
        net.events[2]
    );
    assert!(
        net.engines[2]
            .status(&d)
            .unwrap()
            .unimported
            .iter()
            .all(|p| p.group_id != want.group_id)
    );
    // Everyone removes X; then nothing of X's group is kept anywhere, and the rest agree.
    net.settle(6000);
    for i in 1..3 {
        net.engines[i].commit_pending_removals(7000).unwrap();
    }
    net.settle(7000);
    for i in 0..3 {
        assert!(send_group_at(&net, i, &d, "m3").waiting.is_empty(), "m{i}");
    }
    assert!(all_agree_without(&net, &d, 3));
}

/// Every member but `gone` holds the same epoch authenticator for every Send Group but
/// `gone`'s.
fn all_agree_without(net: &Net, d: &DGroupId, gone: usize) -> bool {
    let owners: Vec<String> = (0..net.names.len())
        .filter(|&i| i != gone)
        .map(|i| net.names[i].clone())
        .collect();
    owners.iter().all(|owner| {
        let auths: Vec<_> = (0..net.names.len())
            .filter(|&i| i != gone)
            .map(|i| send_group_at(net, i, d, owner).epoch_authenticator)
            .collect();
        auths.iter().all(|a| a.is_some() && *a == auths[0])
    })
}

#[test]
fn a_missing_member_that_shows_up_is_retried_at_once_not_after_the_retry_interval() {
    // m2 has one key package: m0 adds it, m1 finds none.
    let mut net = Net::new(3, 4, 21);
    let spare = net.stock[2].split_off(1);
    let d = net.engines[0]
        .create_dgroup("team", &["m1".to_string(), "m2".to_string()], 1000)
        .unwrap();
    net.drain(0, 1000);
    net.sync(1, 1000).unwrap();
    let own_members = |net: &Net, i: usize| {
        let st = net.engines[i].status(&d).unwrap();
        let owner = &net.names[i];
        st.send_groups
            .into_iter()
            .find(|g| &g.owner == owner)
            .unwrap()
            .members
    };
    assert!(!own_members(&net, 1).contains(&"m2".to_string()));
    // m1 already retried once (at once after opening): the next retry is a minute away.
    assert!(net.engines[1].poll_timeout().unwrap() > 2000);
    // m2 comes online with key packages, joins m0's Send Group and welcomes m1 to its own.
    net.stock[2] = spare;
    net.sync(2, 1500).unwrap();
    // m1 sees m2's Welcome: m2 is back, so m1 claims for it again at once.
    let before = net.events[1].len();
    net.sync(1, 2000).unwrap();
    assert!(
        own_members(&net, 1).contains(&"m2".to_string()),
        "{:?}",
        &net.events[1][before..]
    );
}

#[test]
fn every_member_is_pinned_once_seen_and_a_state_from_before_contacts_pins_its_groups_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let (mut net, d) = three_in(dir.path(), 21);
    let keys: Vec<Vec<u8>> = (0..3)
        .map(|i| net.engines[i].identity_key().unwrap())
        .collect();
    let contacts = net.engines[1].contacts().unwrap();
    assert_eq!(
        contacts
            .iter()
            .map(|c| (c.client_id.as_str(), c.key.clone()))
            .collect::<Vec<_>>(),
        vec![("m0", keys[0].clone()), ("m2", keys[2].clone())]
    );
    assert!(contacts.iter().all(|c| c.first_seen_ms == 1000));
    let s = net.engines[1].status(&d).unwrap();
    assert!(s.key_mismatches.is_empty());
    assert_eq!(s.unverified, vec!["m0".to_string(), "m2".to_string()]);
    assert_eq!(
        net.engines[1].confirm_verified("m2", 2000).unwrap(),
        keys[2]
    );
    assert_eq!(
        net.engines[1].status(&d).unwrap().unverified,
        vec!["m0".to_string()]
    );
    drop(net);

    // A state database of a version without contacts: its held Send Groups are pinned once.
    let path = dir.path().join("m1.db");
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "DELETE FROM dmls_contact; DELETE FROM dmls_meta WHERE key = 'contacts_backfilled';",
        )
        .unwrap();
    }
    let e = Engine::open(rusqlite::Connection::open(&path).unwrap()).unwrap();
    let contacts = e.contacts().unwrap();
    assert_eq!(contacts.len(), 2);
    assert!(
        contacts
            .iter()
            .all(|c| c.first_seen_ms == 0 && c.verified_ms.is_none())
    );
    assert_eq!(contacts[0].key, keys[0]);
    assert_eq!(contacts[1].key, keys[2]);
    assert!(e.status(&d).unwrap().key_mismatches.is_empty());
}
