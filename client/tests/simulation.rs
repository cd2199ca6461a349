//! Deterministic, seeded simulation of DMLS members with no relay: random delivery order
//! within and across Send Groups, duplicated and delayed messages, interleaved sends,
//! updates, and (in every fourth seed) a removal.
//!
//! `DMLS_SIM_SEEDS=N` runs seeds 0..N (default 200); `DMLS_SIM_SEED=S` replays one seed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod engine_common;

use std::collections::BTreeMap;

use dmls_client::engine::{EngineError, Event, MessageId, TEXT_PLAIN, WaitReason};
use engine_common::Net;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const MEMBERS: usize = 8;
const STEPS: usize = 120;
/// Deliveries are mostly picked among this many oldest ones.
const WINDOW: usize = 24;

/// One member's view of a Send Group: (member, epoch, epoch authenticator).
type View = (usize, Option<u64>, Option<String>);

/// Outcome numbers of one seed.
#[derive(Debug, Default, Clone, Copy)]
struct Stats {
    attempts: u64,
    processed: u64,
    sent: u64,
    commits: u64,
}

fn run_seed(seed: u64) -> Result<Stats, String> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut net = Net::new(MEMBERS, MEMBERS, seed);
    let others: Vec<String> = net.names[1..].to_vec();
    let d = net.engines[0]
        .create_dgroup("sim", &others, 0)
        .map_err(|e| e.to_string())?;
    let mut now = 1_000u64;
    let with_removal = seed % 4 == 3;
    let removed = MEMBERS - 1;
    let mut removal_done = false;
    // (sender, message id) of every application message sent.
    let mut sent: Vec<(usize, MessageId, bool)> = Vec::new();
    let mut stats = Stats::default();
    for step in 0..STEPS {
        now += rng.random_range(1..50);
        net.drain_all(now);
        if with_removal && !removal_done && step == STEPS / 2 {
            // Quiesce, then m0 removes the last member, who stays silent from then on.
            net.settle(now);
            net.engines[0]
                .remove(&d, &net.names[removed].clone(), now)
                .map_err(|e| format!("remove: {e}"))?;
            removal_done = true;
            continue;
        }
        let actor = rng.random_range(0..MEMBERS);
        let silent = removal_done && actor == removed;
        let roll = rng.random_range(0..100);
        if roll < 70 || silent {
            if net.pool.is_empty() {
                continue;
            }
            // Mostly one of the oldest deliveries (a delay is bounded, as the relay keeps
            // per-group order up to concurrent posts), sometimes any: messages overtake others.
            let k = if rng.random_range(0..100) < 5 {
                rng.random_range(0..net.pool.len())
            } else {
                rng.random_range(0..net.pool.len().min(WINDOW))
            };
            if rng.random_range(0..100) < 20 {
                // A sync answer: several deliveries for one member in one engine batch.
                let to = net.pool[k].to;
                let ks: Vec<usize> = (k..net.pool.len().min(k + WINDOW))
                    .filter(|&j| net.pool[j].to == to)
                    .take(8)
                    .collect();
                net.deliver_batch(&ks, now)?;
            } else {
                let dup = rng.random_range(0..100) < 10;
                net.deliver(k, dup, now)?;
            }
        } else if roll < 88 {
            let body = format!("seed {seed} step {step} from {actor}");
            match net.engines[actor].send(&d, TEXT_PLAIN, body.as_bytes(), now) {
                Ok(id) => sent.push((actor, id, removal_done)),
                Err(EngineError::NotReady(_) | EngineError::UnknownDGroup(_)) => {}
                Err(e) => return Err(format!("send by m{actor}: {e}")),
            }
        } else if roll < 96 {
            match net.engines[actor].update(&d, now) {
                Ok(()) => stats.commits += 1,
                Err(EngineError::NotReady(_) | EngineError::UnknownDGroup(_)) => {}
                Err(e) => return Err(format!("update by m{actor}: {e}")),
            }
        } else {
            net.engines[actor]
                .commit_pending_removals(now)
                .map_err(|e| format!("commit_pending_removals by m{actor}: {e}"))?;
        }
    }
    // Deliver everything left, in random order, then apply pending removals and settle.
    loop {
        net.drain_all(now);
        if net.pool.is_empty() {
            break;
        }
        let k = rng.random_range(0..net.pool.len().min(WINDOW));
        net.deliver(k, false, now)?;
    }
    for i in 0..MEMBERS {
        if !(removal_done && i == removed) {
            net.engines[i]
                .commit_pending_removals(now)
                .map_err(|e| e.to_string())?;
        }
    }
    net.settle(now);

    // Every member ends with the same epoch authenticator for every Send Group.
    let active: Vec<usize> = (0..MEMBERS)
        .filter(|i| !(removal_done && *i == removed))
        .collect();
    let mut views: BTreeMap<String, Vec<View>> = BTreeMap::new();
    for &i in &active {
        let st = net.engines[i].status(&d).map_err(|e| e.to_string())?;
        for sg in st.send_groups {
            if removal_done && sg.owner == net.names[removed] {
                continue;
            }
            // Deferred leaf refreshes wait for the owner's next commit, which may not have
            // come yet: they are not stuck. Anything else waiting at the end is.
            let stuck: Vec<_> = sg
                .waiting
                .iter()
                .filter(|w| !matches!(w.waits_for, WaitReason::Commit(_)))
                .collect();
            if !stuck.is_empty() {
                return Err(format!(
                    "m{i} still has waiting messages in {}'s group: {:?}",
                    sg.owner, sg.waiting
                ));
            }
            views
                .entry(sg.owner)
                .or_default()
                .push((i, sg.epoch, sg.epoch_authenticator));
        }
    }
    for (owner, v) in &views {
        if v.len() != active.len() {
            return Err(format!("not everyone holds {owner}'s group: {v:?}"));
        }
        if v.iter().any(|x| x.2.is_none() || x.2 != v[0].2) {
            return Err(format!(
                "epoch authenticators of {owner}'s group differ: {v:?}"
            ));
        }
    }
    // Every application message decrypted exactly once by every other member.
    let mut got: Vec<BTreeMap<MessageId, usize>> = vec![BTreeMap::new(); MEMBERS];
    for (i, evs) in net.events.iter().enumerate() {
        for e in evs {
            if let Event::Message(m) = e {
                *got[i].entry(m.message_id).or_default() += 1;
            }
        }
    }
    for &(s, id, after_removal) in &sent {
        for (r, got_r) in got.iter().enumerate() {
            if r == s {
                continue;
            }
            let n = got_r.get(&id).copied().unwrap_or(0);
            // The removed member may or may not read what is sent after its removal.
            let ok = if removal_done && r == removed && after_removal {
                n <= 1
            } else {
                n == 1
            };
            if !ok {
                return Err(format!("m{r} decrypted message {id} of m{s} {n} times"));
            }
        }
    }
    for e in &net.engines {
        let c = e.counters();
        stats.attempts += c.process_attempts;
        stats.processed += c.processed;
    }
    stats.sent = sent.len() as u64;
    if stats.attempts as f64 > 1.1 * stats.processed as f64 {
        return Err(format!(
            "{} processing attempts for {} delivered messages",
            stats.attempts, stats.processed
        ));
    }
    Ok(stats)
}

#[test]
fn simulation_converges_for_every_seed() {
    let seeds: Vec<u64> = match std::env::var("DMLS_SIM_SEED") {
        Ok(s) => vec![s.parse().unwrap()],
        Err(_) => {
            let n: u64 = std::env::var("DMLS_SIM_SEEDS")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(200);
            (0..n).collect()
        }
    };
    let threads = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .min(8);
    let t0 = std::time::Instant::now();
    let chunks: Vec<Vec<u64>> = (0..threads)
        .map(|t| seeds.iter().copied().skip(t).step_by(threads).collect())
        .collect();
    let results: Vec<Vec<(u64, Result<Stats, String>)>> = std::thread::scope(|s| {
        let hs: Vec<_> = chunks
            .into_iter()
            .map(|c| s.spawn(move || c.into_iter().map(|seed| (seed, run_seed(seed))).collect()))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut total = Stats::default();
    let mut failures = Vec::new();
    for (seed, r) in results.into_iter().flatten() {
        match r {
            Ok(s) => {
                total.attempts += s.attempts;
                total.processed += s.processed;
                total.sent += s.sent;
                total.commits += s.commits;
            }
            Err(e) => failures.push(format!("seed {seed} (replay: DMLS_SIM_SEED={seed}): {e}")),
        }
    }
    eprintln!(
        "{} seeds in {:?}: {} messages sent, {} updates, {} openmls process calls for {} delivered ({:.3} per message)",
        seeds.len(),
        t0.elapsed(),
        total.sent,
        total.commits,
        total.attempts,
        total.processed,
        total.attempts as f64 / total.processed.max(1) as f64
    );
    assert!(
        failures.is_empty(),
        "{} failing seeds:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
