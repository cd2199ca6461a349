//! Deterministic, seeded simulation of DMLS members with no relay: random delivery order
//! within and across Send Groups, duplicated and delayed messages, interleaved sends,
//! updates and renames, the engines' clock-driven duties (`Engine::handle_timeout`) on a
//! simulated clock, in every eighth seed a removal and in another eighth a member leaves on its
//! own; in every fourth seed days pass, a member falls asleep and is evicted by everyone, and a
//! member who only reads is not. In every seed two newcomers are added (docs/PROTOCOL.md
//! "Add"): in even seeds by two members at the same step (concurrent adds), in odd ones the
//! second later, after the removal, leave or sleep of that seed; in another eighth the first
//! newcomer is removed again by its adder while the others are still adding it.
//!
//! `DMLS_SIM_SEEDS=N` runs seeds 0..N (default 200); `DMLS_SIM_SEED=S` replays one seed.

use std::collections::BTreeMap;

use crate::common::{Delivery, Net};
use dmls_client::engine::{
    DutyPolicy, EngineError, Event, Input, MessageId, TEXT_PLAIN, WaitReason,
};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const MEMBERS: usize = 8;
/// Identities added to the DGroup while it runs: m8 and m9.
const NEWCOMERS: usize = 2;
/// Every identity.
const ALL: usize = MEMBERS + NEWCOMERS;
const STEPS: usize = 120;
/// Deliveries are mostly picked among this many oldest ones.
const WINDOW: usize = 24;
/// A simulated day, in milliseconds of the simulated clock.
const DAY: u64 = 100_000;
/// In a seed where days pass, half a day passes every this many steps; then every member
/// that is awake syncs.
const HALF_DAY_EVERY: usize = 8;
/// The duty policy of every member: acknowledge after a day, evict after four.
const DUTIES: DutyPolicy = DutyPolicy {
    eviction_threshold_ms: Some(4 * DAY),
    ack_deadline_ms: DAY,
    check_interval_ms: 1_000,
    retry_interval_ms: 60_000,
};

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

/// What a seed does besides random sends, updates, deliveries and duties.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    Plain,
    /// Halfway, m0 removes the last member, who stays silent from then on.
    Removal,
    /// Halfway, the last member leaves (docs/PROTOCOL.md "Leave"): everyone removes it, and it
    /// reads nothing sent after.
    Leave,
    /// Two steps after its adder added the first newcomer, the adder removes it again, while
    /// the others are still adding it (an add and a removal racing, docs/PROTOCOL.md "Add"): it
    /// ends removed everywhere, and stays silent from then on.
    AddRemoval,
    /// Half a day passes every [`HALF_DAY_EVERY`] steps. Early on the last member falls asleep
    /// (never syncs again): everyone must evict it. The member before it only reads: it must
    /// not be evicted, as its overdue acknowledgements keep it up to date.
    Days,
}

impl Scenario {
    fn of(seed: u64) -> Scenario {
        match seed % 8 {
            3 => Scenario::Removal,
            7 => Scenario::Leave,
            6 => Scenario::AddRemoval,
            1 | 5 => Scenario::Days,
            _ => Scenario::Plain,
        }
    }

    /// The step at which the last member leaves the conversation.
    fn leave_at(self) -> Option<usize> {
        match self {
            Scenario::Plain | Scenario::AddRemoval => None,
            Scenario::Removal | Scenario::Leave => Some(STEPS / 2),
            Scenario::Days => Some(STEPS / 8),
        }
    }
}

fn run_seed(seed: u64) -> Result<Stats, String> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut net = Net::new(ALL, ALL, seed);
    for e in &mut net.engines {
        e.set_duty_policy(DUTIES);
    }
    let scenario = Scenario::of(seed);
    let others: Vec<String> = net.names[1..MEMBERS].to_vec();
    let d = net.engines[0]
        .create_dgroup("sim", &others, 0)
        .map_err(|e| e.to_string())?;
    let mut now = 1_000u64;
    // Removed or asleep, in the scenarios that have one.
    let last = if scenario == Scenario::AddRemoval {
        MEMBERS
    } else {
        MEMBERS - 1
    };
    let reader = MEMBERS - 2;
    let mut gone = false;
    // Every application message sent, with who was in the sender's Send Group then.
    let mut sent: Vec<Sent> = Vec::new();
    // Newcomers still to add, and from which step on.
    let mut adds: Vec<(usize, usize)> = if seed.is_multiple_of(2) {
        vec![(MEMBERS, STEPS / 4), (MEMBERS + 1, STEPS / 4)]
    } else {
        vec![(MEMBERS, STEPS / 4), (MEMBERS + 1, STEPS * 5 / 8)]
    };
    let mut adders: Vec<usize> = Vec::new();
    // When the first newcomer was added, and by whom.
    let mut first_added: Option<(usize, usize)> = None;
    let mut stats = Stats::default();
    // Whether a member that is still active at the end renamed the DGroup.
    let mut renamed_by_active = false;
    for step in 0..STEPS {
        now += rng.random_range(1..50);
        net.drain_all(now);
        if scenario.leave_at() == Some(step) {
            // Quiesce, then the last member leaves.
            net.settle(now);
            if scenario == Scenario::Removal {
                net.engines[0]
                    .remove(&d, &net.names[last].clone(), now)
                    .map_err(|e| format!("remove: {e}"))?;
            }
            if scenario == Scenario::Leave
                && !net.engines[last]
                    .leave(&d, now)
                    .map_err(|e| format!("leave: {e}"))?
            {
                return Err("the leave was not announced".into());
            }
            gone = true;
            continue;
        }
        if scenario == Scenario::AddRemoval
            && !gone
            && let Some((at, adder)) = first_added
            && step >= at + 2
        {
            net.engines[adder]
                .remove(&d, &net.names[last].clone(), now)
                .map_err(|e| format!("removal of the newcomer: {e}"))?;
            gone = true;
        }
        let asleep = (scenario == Scenario::Days && gone).then_some(last);
        if let Some(s) = asleep {
            // The sleeper fetches nothing.
            net.pool.retain(|p| p.to != s);
        }
        if scenario == Scenario::Leave && gone {
            // The leaver follows no Send Group of the DGroup any more.
            net.pool
                .retain(|p| p.to != last || matches!(p.input, Input::Welcome { .. }));
        }
        if scenario == Scenario::Days && step > 0 && step % HALF_DAY_EVERY == 0 {
            now += DAY / 2;
            morning(&mut net, &mut rng, asleep, now)?;
            continue;
        }
        if let Some(pos) = adds.iter().position(|a| a.1 <= step) {
            // A member that is not the last one (gone in some scenarios) nor an adder
            // already adds the newcomer; one not ready yet leaves it for a later step.
            let candidates: Vec<usize> = (0..MEMBERS - 1).filter(|a| !adders.contains(a)).collect();
            let adder = candidates[rng.random_range(0..candidates.len())];
            let newcomer = adds[pos].0;
            match net.engines[adder].add(&d, &[net.names[newcomer].clone()], now) {
                Ok(()) => {
                    adds.remove(pos);
                    adders.push(adder);
                    if newcomer == MEMBERS {
                        first_added = Some((step, adder));
                    }
                }
                // Not in the DGroup yet, or its Send Group is not set up yet.
                Err(EngineError::NotReady(_) | EngineError::UnknownDGroup(_)) => {}
                Err(e) => return Err(format!("add of m{newcomer} by m{adder}: {e}")),
            }
            if adds.first().is_some_and(|a| a.1 <= step) {
                // The concurrent one: in the same step, before anything is delivered.
                continue;
            }
        }
        let actor = rng.random_range(0..ALL);
        let silent = gone && actor == last;
        let reads_only = scenario == Scenario::Days && actor == reader;
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
        } else if reads_only {
            continue;
        } else if roll < 88 {
            let body = format!("seed {seed} step {step} from {actor}");
            match net.engines[actor].send(&d, TEXT_PLAIN, body.as_bytes(), now) {
                Ok(id) => sent.push(Sent {
                    sender: actor,
                    id,
                    after_gone: gone,
                    readers: readers_of(&net, &d, actor)?,
                }),
                Err(EngineError::NotReady(_) | EngineError::UnknownDGroup(_)) => {}
                Err(e) => return Err(format!("send by m{actor}: {e}")),
            }
        } else if roll < 95 {
            match net.engines[actor].update(&d, now) {
                Ok(()) => stats.commits += 1,
                Err(EngineError::NotReady(_) | EngineError::UnknownDGroup(_)) => {}
                Err(e) => return Err(format!("update by m{actor}: {e}")),
            }
        } else if roll < 97 {
            match net.engines[actor].rename(&d, &format!("s{step}m{actor}"), now) {
                Ok(()) => renamed_by_active |= !(gone && actor == last),
                Err(EngineError::NotReady(_) | EngineError::UnknownDGroup(_)) => {}
                Err(e) => return Err(format!("rename by m{actor}: {e}")),
            }
        } else {
            net.tick(actor, now);
        }
    }
    if !adds.is_empty() {
        return Err(format!("newcomers never added: {adds:?}"));
    }
    let active: Vec<usize> = (0..ALL).filter(|i| !(gone && *i == last)).collect();
    let asleep = matches!(scenario, Scenario::Days | Scenario::Leave).then_some(last);
    finish(&mut net, &mut rng, &active, asleep, now)?;
    converged_views(&net, &d, &active, gone.then_some(last))?;
    same_name(&net, &d, &active, renamed_by_active)?;
    if gone {
        check_removed(&net, &d, &active, last)?;
    }
    if scenario == Scenario::Days {
        check_eviction(&net, &d, &active, last, reader)?;
    }
    if scenario == Scenario::Leave {
        check_left(&net, &d, &active, last)?;
    }
    let left = (scenario == Scenario::Leave).then_some(last);
    check_messages(&net, &sent, gone.then_some(last), left)?;
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

/// Half a day has passed: every member awake syncs (takes everything the relay holds for it)
/// and does its due duties, in random order.
fn morning(
    net: &mut Net,
    rng: &mut ChaCha8Rng,
    asleep: Option<usize>,
    now: u64,
) -> Result<(), String> {
    let mut order: Vec<usize> = (0..ALL).filter(|i| Some(*i) != asleep).collect();
    order.shuffle(rng);
    for i in order {
        net.sync(i, now)?;
    }
    Ok(())
}

/// Delivers everything left in random order (nothing to a sleeper or a leaver), then lets the `active`
/// members do their due duties (pending removals, eviction) and settles, until nothing is due.
fn finish(
    net: &mut Net,
    rng: &mut ChaCha8Rng,
    active: &[usize],
    asleep: Option<usize>,
    now: u64,
) -> Result<(), String> {
    let held = |p: &Delivery| Some(p.to) == asleep;
    loop {
        net.drain_all(now);
        net.pool.retain(|p| !held(p));
        if net.pool.is_empty() {
            break;
        }
        // Only deliveries a member can take now (it follows their Send Group).
        let takeable: Vec<usize> = (0..net.pool.len())
            .filter(|&k| {
                let p = &net.pool[k];
                let followed = net.engines[p.to].followed_groups().unwrap_or_default();
                crate::common::can_take(&followed, &p.input)
            })
            .take(WINDOW)
            .collect();
        if takeable.is_empty() {
            // The rest waits for what the duties below do (a member that learns of a newcomer
            // only from a later commit follows its Send Group then).
            break;
        }
        let k = takeable[rng.random_range(0..takeable.len())];
        net.deliver(k, false, now)?;
    }
    for _ in 0..8 {
        if !active
            .iter()
            .any(|&i| net.engines[i].poll_timeout().is_some_and(|t| t <= now))
        {
            return Ok(());
        }
        for &i in active {
            net.tick(i, now);
        }
        let left = net.settle_holding(now, held).len();
        if asleep.is_none() && left > 0 {
            return Err(format!("{left} deliveries can never be made"));
        }
    }
    Err("duties still due after eight rounds".into())
}

/// Checks that every `active` member ends with the same epoch authenticator for every Send
/// Group (but that of `gone`) and nothing stuck.
fn converged_views(
    net: &Net,
    d: &dmls_client::engine::DGroupId,
    active: &[usize],
    gone: Option<usize>,
) -> Result<(), String> {
    let mut views: BTreeMap<String, Vec<View>> = BTreeMap::new();
    for &i in active {
        let st = net.engines[i].status(d).map_err(|e| e.to_string())?;
        for sg in st.send_groups {
            if gone.is_some_and(|g| sg.owner == net.names[g]) {
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
                let detail: Vec<String> = net.engines[i]
                    .status(d)
                    .map_err(|e| e.to_string())?
                    .send_groups
                    .iter()
                    .map(|g| {
                        format!(
                            "{} {} joined {} epoch {:?} members {:?}",
                            g.owner,
                            &g.group_id[..8],
                            g.joined,
                            g.epoch,
                            g.members
                        )
                    })
                    .collect();
                return Err(format!(
                    "m{i} still has waiting messages in {}'s group: {:?}\n{}",
                    sg.owner,
                    sg.waiting,
                    detail.join("\n")
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
    Ok(())
}

/// The Days scenario: the sleeper is evicted, by someone, and removed by every `active`
/// member; nobody else is evicted or removed, the reader included, who acknowledged with
/// commits of its own (it never sent or updated).
fn check_eviction(
    net: &Net,
    d: &dmls_client::engine::DGroupId,
    active: &[usize],
    sleeper: usize,
    reader: usize,
) -> Result<(), String> {
    let sleeper_name = &net.names[sleeper];
    let mut evictions = 0;
    for &i in active {
        for e in &net.events[i] {
            match e {
                Event::MemberEvicted { member, .. } if member == sleeper_name => evictions += 1,
                Event::MemberEvicted { member, .. } => {
                    return Err(format!("m{i} evicted {member}, who was awake"));
                }
                Event::WeWereRemoved { by, .. } => return Err(format!("{by} removed m{i}")),
                _ => {}
            }
        }
    }
    if evictions == 0 {
        return Err("nobody evicted the sleeper".into());
    }
    let own = net.engines[reader]
        .status(d)
        .map_err(|e| e.to_string())?
        .send_groups
        .into_iter()
        .find(|g| g.owner == net.names[reader])
        .and_then(|g| g.epoch);
    // Epoch 1 is the add of the others; one more for removing the sleeper.
    if own.is_none_or(|e| e < 3) {
        return Err(format!(
            "the reader's own Send Group is at epoch {own:?}: it never acknowledged"
        ));
    }
    Ok(())
}

/// Every `active` member shows the same name, a renamed one if an active member renamed.
fn same_name(
    net: &Net,
    d: &dmls_client::engine::DGroupId,
    active: &[usize],
    renamed: bool,
) -> Result<(), String> {
    let names: Vec<String> = active
        .iter()
        .map(|&i| net.engines[i].status(d).map(|s| s.summary.name))
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    if names.iter().any(|n| *n != names[0]) {
        return Err(format!("names differ: {names:?}"));
    }
    if renamed && names[0] == "sim" {
        return Err("a rename got lost".into());
    }
    Ok(())
}

/// Every `active` member knows that `gone` was removed, and no Send Group of `gone`'s others
/// holds it any more at any of them.
fn check_removed(
    net: &Net,
    d: &dmls_client::engine::DGroupId,
    active: &[usize],
    gone: usize,
) -> Result<(), String> {
    let name = &net.names[gone];
    for &i in active {
        let st = net.engines[i].status(d).map_err(|e| e.to_string())?;
        if !st.summary.removed.contains(name) {
            return Err(format!("m{i} does not know that {name} was removed"));
        }
        for sg in st.send_groups.iter().filter(|g| &g.owner != name) {
            if sg.members.contains(name) {
                return Err(format!("m{i} still sees {name} in {}'s group", sg.owner));
            }
        }
    }
    Ok(())
}

/// The Leave scenario: someone read the leaver's announcement (nobody else removes it), and
/// the leaver holds no Send Group of the DGroup any more.
fn check_left(
    net: &Net,
    d: &dmls_client::engine::DGroupId,
    active: &[usize],
    leaver: usize,
) -> Result<(), String> {
    let name = &net.names[leaver];
    let told = active.iter().any(|&i| {
        net.events[i]
            .iter()
            .any(|e| matches!(e, Event::MemberLeft { member, .. } if member == name))
    });
    if !told {
        return Err("nobody read the leave announcement".into());
    }
    let st = net.engines[leaver].status(d).map_err(|e| e.to_string())?;
    if st.summary.left_ms.is_none() || !st.send_groups.is_empty() {
        return Err(format!("the leaver still holds {:?}", st.send_groups));
    }
    Ok(())
}

/// One application message sent.
struct Sent {
    sender: usize,
    id: MessageId,
    /// Sent after the last member was removed, left or fell asleep.
    after_gone: bool,
    /// The members of the sender's Send Group when it was sent.
    readers: Vec<usize>,
}

/// The members of `i`'s own Send Group now.
fn readers_of(
    net: &Net,
    d: &dmls_client::engine::DGroupId,
    i: usize,
) -> Result<Vec<usize>, String> {
    let st = net.engines[i].status(d).map_err(|e| e.to_string())?;
    let own = st
        .send_groups
        .iter()
        .find(|g| g.owner == net.names[i])
        .ok_or("no own Send Group")?;
    Ok(own.members.iter().map(|m| net.index(m)).collect())
}

/// Every application message decrypted exactly once by every member that was in the sender's
/// Send Group when it was sent, and by nobody else (a newcomer reads nothing from before it
/// was added; a member `gone` may or may not read what was sent after it was removed; a member
/// that `left` reads none of it).
fn check_messages(
    net: &Net,
    sent: &[Sent],
    gone: Option<usize>,
    left: Option<usize>,
) -> Result<(), String> {
    let mut got: Vec<BTreeMap<MessageId, usize>> = vec![BTreeMap::new(); ALL];
    for (i, evs) in net.events.iter().enumerate() {
        for e in evs {
            if let Event::Message(m) = e {
                *got[i].entry(m.message_id).or_default() += 1;
            }
        }
    }
    for m in sent {
        let (s, id, after_leaving) = (m.sender, m.id, m.after_gone);
        for (r, got_r) in got.iter().enumerate() {
            if r == s {
                continue;
            }
            let n = got_r.get(&id).copied().unwrap_or(0);
            let ok = if Some(r) == left && after_leaving {
                n == 0
            } else if Some(r) == gone && after_leaving {
                n <= 1
            } else if m.readers.contains(&r) {
                n == 1
            } else {
                n == 0
            };
            if !ok {
                return Err(format!("m{r} decrypted message {id} of m{s} {n} times"));
            }
        }
    }
    Ok(())
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
