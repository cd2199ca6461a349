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
    net.engines[0].send(&d, TEXT_PLAIN, b"after update", 4000).unwrap();
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
    eprintln!("total {:?} counters {:?}", t0.elapsed(), net.engines[0].counters());
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
