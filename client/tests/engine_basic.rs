//! Basic flows of the engine with a few members and an in-order network.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod engine_common;

use dmls_client::engine::{Event, TEXT_PLAIN};
use engine_common::Net;

fn messages(net: &Net, i: usize) -> Vec<Vec<u8>> {
    net.events[i]
        .iter()
        .filter_map(|e| match e {
            Event::Message(m) => Some(m.body.clone()),
            _ => None,
        })
        .collect()
}

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
    let mut net = Net::new(3, 4, 3);
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
