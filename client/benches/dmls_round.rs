//! DMLS benchmark: set-up cost, the cost of one full commit round, and backlog sync speed.
//!
//! ```text
//! cargo bench -p dmls-client --bench dmls_round
//! DMLS_BENCH_SIZES=8,32 DMLS_BENCH_BACKLOG=2000 cargo bench -p dmls-client --bench dmls_round
//! ```
//! 1. For N members (default 8, 32, 64): time and bytes to set up a DGroup (every member's
//!    Send Group created, every Welcome processed), with the engines talking through an
//!    in-memory store-and-forward that behaves like the relay.
//! 2. One round in which every member commits (DMLS Update importing N-1 PSKs, plus its
//!    leaf-refresh Update proposals) and then processes everyone else's commit and proposals.
//!    Per-member wall-clock time (the engine is called from one thread; fsyncs of the durable
//!    file-backed SQLite state included) and CPU time (all threads of the process: openmls
//!    builds and decrypts paths on rayon's threads; Linux only, from `/proc/self/task/*/schedstat`).
//! 3. Adding one member to the DGroup of N (docs/PROTOCOL.md "Add"): member 1 adds a newcomer;
//!    everyone syncs until nothing moves. Time until every Send Group includes the newcomer
//!    and it has read a message of every other member and sent one that everyone read, bytes
//!    moved, and CPU time per existing member (`DMLS_BENCH_ADD=0` skips it).
//! 4. Backlog: 10,000 application messages through a real relay in this process (SQLite),
//!    then a member's `sync_once` over all of them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use clap::Parser as _;
use dmls_client::client::{
    Client, Durability, DurabilityBarrier, KeyPackagePolicy, LocalEngine, open_state_db_with,
};
use dmls_client::drive::{ClaimAnswer, OutboxError, Transport, perform_outbox};
use dmls_client::engine::{DGroupId, Engine, Input};
use futures::executor::block_on;

const NOW: u64 = 1_700_000_000_000;

struct Member {
    id: String,
    engine: Engine,
    barrier: Option<DurabilityBarrier>,
}

/// An in-memory stand-in for the relay: key-package stock, welcome inboxes, group logs.
#[derive(Default)]
struct Net {
    stock: HashMap<String, VecDeque<Vec<u8>>>,
    last_resort: HashMap<String, Vec<u8>>,
    inbox: HashMap<String, Vec<(u64, String, Vec<u8>)>>,
    next_welcome: u64,
    groups: HashMap<(String, String), Vec<Vec<u8>>>,
    /// Bytes that crossed the network: claimed key packages, welcomes (each posted item once,
    /// as the client's relay transport groups them, see `dmls_client::relay::fan_out`), group
    /// messages.
    bytes: u64,
    /// Welcomes delivered (one per recipient) and group messages.
    messages: u64,
    /// Welcome bytes as posted (each item once) and as they were with one welcome per
    /// recipient, for the comparison printed after the table.
    welcome_bytes: u64,
    welcome_bytes_per_recipient: u64,
}

impl Net {
    /// Carries out `m`'s outbox until it is empty with the library's outbox driver, as the
    /// facade does.
    fn drain(&mut self, m: &mut Member) -> Result<()> {
        let mut engine = LocalEngine {
            engine: &mut m.engine,
            barrier: m.barrier.as_mut(),
            now_ms: NOW,
        };
        let mut relay = BenchRelay {
            net: self,
            me: &m.id,
        };
        match block_on(perform_outbox(&mut engine, &mut relay)) {
            Ok(_) => Ok(()),
            Err(OutboxError::Engine(e)) => Err(e.into()),
            Err(OutboxError::Transport(e)) => match e {},
        }
    }

    /// Feeds `m` everything new for it, in store order, in one batch as the facade's sync
    /// does, then, caught up, does its due duties (`Engine::handle_timeout`). Returns how
    /// many inputs it got.
    fn deliver(&mut self, m: &mut Member) -> Result<usize> {
        let mut inputs = Vec::new();
        let cursor = m.engine.welcome_cursor()?;
        if let Some(ws) = self.inbox.get(&m.id) {
            for (id, from, data) in ws.iter().filter(|w| w.0 > cursor) {
                inputs.push(Input::Welcome {
                    inbox_id: Some(*id),
                    from: from.clone(),
                    data: data.clone(),
                });
            }
        }
        for g in m.engine.followed_groups()? {
            let key = (g.owner.clone(), g.group_id.clone());
            let Some(log) = self.groups.get(&key) else {
                continue;
            };
            for (i, data) in log.iter().enumerate().skip(g.after_seq as usize) {
                inputs.push(Input::GroupMessage {
                    owner: g.owner.clone(),
                    group_id: g.group_id.clone(),
                    seq: Some(i as u64 + 1),
                    data: data.clone(),
                });
            }
        }
        let n = inputs.len();
        if n > 0 {
            for r in m.engine.handle_batch(inputs, NOW)? {
                if let Err(e) = r {
                    eprintln!("{}: input rejected: {e}", m.id);
                }
            }
        }
        m.engine.set_caught_up(true);
        m.engine.handle_timeout(NOW)?;
        Ok(n)
    }
}

/// The in-memory network as the transport of member `me`'s outbox.
struct BenchRelay<'a> {
    net: &'a mut Net,
    me: &'a str,
}

impl Transport for BenchRelay<'_> {
    type Error = Infallible;

    /// Answers from the stock, falling back to last-resort packages.
    async fn claim_key_packages(
        &mut self,
        client_ids: Vec<String>,
    ) -> Result<ClaimAnswer, Infallible> {
        let net = &mut *self.net;
        let mut answer = ClaimAnswer::default();
        for c in client_ids {
            let kp = net.stock.get_mut(&c).and_then(|s| s.pop_front());
            match kp.or_else(|| net.last_resort.get(&c).cloned()) {
                Some(kp) => {
                    net.bytes += kp.len() as u64;
                    answer.key_packages.push((c, kp));
                }
                None => answer.missing.push(c),
            }
        }
        Ok(answer)
    }

    async fn put_relay_group(&mut self, _: String, _: Vec<String>) -> Result<(), Infallible> {
        Ok(())
    }

    /// Counts the bytes of each welcome the relay client posts (welcomes with the same bytes as
    /// one), delivers one to each recipient.
    async fn post_welcomes(&mut self, welcomes: Vec<(String, Vec<u8>)>) -> Result<(), Infallible> {
        let net = &mut *self.net;
        let (posted, _) = dmls_client::relay::fan_out(&welcomes);
        let posted: u64 = posted.iter().map(|w| w.data.0.len() as u64).sum();
        net.bytes += posted;
        net.welcome_bytes += posted;
        for (to, data) in welcomes {
            net.next_welcome += 1;
            net.messages += 1;
            net.welcome_bytes_per_recipient += data.len() as u64;
            net.inbox
                .entry(to)
                .or_default()
                .push((net.next_welcome, self.me.to_string(), data));
        }
        Ok(())
    }

    async fn post_message(
        &mut self,
        owner: String,
        group_id: String,
        data: Vec<u8>,
        _idempotency_key: String,
    ) -> Result<(), Infallible> {
        self.net.bytes += data.len() as u64;
        self.net.messages += 1;
        self.net
            .groups
            .entry((owner, group_id))
            .or_default()
            .push(data);
        Ok(())
    }

    fn is_permanent(&self, e: &Infallible) -> bool {
        match *e {}
    }
}

/// CPU time used so far by every live thread of this process (nanosecond precision), or
/// `None` where `/proc/self/task/*/schedstat` is not available (its first field is the time
/// the thread spent on a CPU).
fn process_cpu() -> Option<Duration> {
    let mut ns: u64 = 0;
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let Ok(text) = std::fs::read_to_string(task.ok()?.path().join("schedstat")) else {
            continue; // the thread exited meanwhile
        };
        ns += text.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(Duration::from_nanos(ns))
}

/// Measures wall-clock and CPU time of one piece of work.
struct Stopwatch(Instant, Option<Duration>);

impl Stopwatch {
    fn start() -> Self {
        Stopwatch(Instant::now(), process_cpu())
    }

    /// Wall-clock time and CPU time (if measurable) since `start`.
    fn stop(&self) -> (Duration, Option<Duration>) {
        let cpu = self.1.zip(process_cpu()).map(|(a, b)| b.saturating_sub(a));
        (self.0.elapsed(), cpu)
    }
}

struct RoundFigures {
    n: usize,
    keygen: Duration,
    setup: Duration,
    setup_bytes: u64,
    setup_messages: u64,
    /// Welcome bytes of the set-up as posted, and as one welcome per recipient would be.
    setup_welcome_bytes: (u64, u64),
    round_total: Duration,
    round_mean: Duration,
    round_max: Duration,
    /// Mean and largest CPU time per member, if measurable.
    round_cpu: Option<(Duration, Duration)>,
    commit_mean: Duration,
    round_bytes: u64,
    round_inputs_per_member: usize,
    add: Option<AddFigures>,
}

/// Adding one member to a DGroup of `n`.
struct AddFigures {
    /// Wall-clock time from the add until every Send Group includes the newcomer, it read a
    /// message of every other member, and everyone read one of its messages.
    total: Duration,
    bytes: u64,
    messages: u64,
    /// Mean and largest CPU time per existing member, if measurable.
    cpu_existing: Option<(Duration, Duration)>,
    /// CPU time of the newcomer.
    cpu_newcomer: Option<Duration>,
    /// Sync rounds (every member syncs once per round) until nothing moved.
    rounds: usize,
}

/// Opens `n` members with durable state in `dir`, each with `n` key packages and a last
/// resort in `net`'s stock.
fn new_members(n: usize, dir: &Path, durability: Durability, net: &mut Net) -> Result<Vec<Member>> {
    let mut members = Vec::with_capacity(n);
    for i in 0..n {
        let id = format!("m{i:03}");
        let (mut engine, barrier) = open_state_db_with(&dir.join(format!("{id}.db")), durability)?;
        engine.create_identity(&id)?;
        let kps = engine.generate_key_packages(n)?;
        net.stock.insert(id.clone(), kps.into());
        net.last_resort
            .insert(id.clone(), engine.generate_last_resort_key_package()?);
        members.push(Member {
            id,
            engine,
            barrier,
        });
    }
    Ok(members)
}

fn bench_round(n: usize, dir: &Path, durability: Durability) -> Result<RoundFigures> {
    let mut net = Net::default();
    let t = Instant::now();
    let mut members = new_members(n, dir, durability, &mut net)?;
    let keygen = t.elapsed();

    // Set-up: member 0 creates, everyone joins and creates its own Send Group.
    let t = Instant::now();
    let others: Vec<String> = members[1..].iter().map(|m| m.id.clone()).collect();
    let dgroup: DGroupId = members[0].engine.create_dgroup("bench", &others, NOW)?;
    net.drain(&mut members[0])?;
    loop {
        let mut moved = 0;
        for m in members.iter_mut() {
            moved += net.deliver(m)?;
            net.drain(m)?;
        }
        if moved == 0 {
            break;
        }
    }
    let setup = t.elapsed();
    let (setup_bytes, setup_messages) = (net.bytes, net.messages);
    let setup_welcome_bytes = (net.welcome_bytes, net.welcome_bytes_per_recipient);
    for m in &members {
        let s = m.engine.status(&dgroup)?;
        let joined = s.send_groups.iter().filter(|g| g.joined).count();
        anyhow::ensure!(joined == n, "{} joined {joined} of {n} Send Groups", m.id);
    }

    // One round: everyone commits, then everyone processes the others' commits.
    let bytes_before = net.bytes;
    let mut per_member = vec![Duration::ZERO; n];
    let mut cpu_per_member = vec![Some(Duration::ZERO); n];
    let mut commit_total = Duration::ZERO;
    for (i, m) in members.iter_mut().enumerate() {
        let t = Stopwatch::start();
        m.engine.update(&dgroup, NOW + 1)?;
        net.drain(m)?;
        let (d, cpu) = t.stop();
        commit_total += d;
        per_member[i] += d;
        cpu_per_member[i] = cpu_per_member[i].zip(cpu).map(|(a, b)| a + b);
    }
    let mut inputs = 0;
    for (i, m) in members.iter_mut().enumerate() {
        let t = Stopwatch::start();
        inputs += net.deliver(m)?;
        net.drain(m)?;
        let (d, cpu) = t.stop();
        per_member[i] += d;
        cpu_per_member[i] = cpu_per_member[i].zip(cpu).map(|(a, b)| a + b);
    }
    for m in &members {
        let s = m.engine.status(&dgroup)?;
        for g in &s.send_groups {
            anyhow::ensure!(
                !g.waiting.iter().any(|w| w.is_commit),
                "{} has commits of {} waiting: {:?}",
                m.id,
                g.owner,
                g.waiting
            );
        }
    }
    let add = if std::env::var("DMLS_BENCH_ADD").is_ok_and(|v| v == "0") {
        None
    } else {
        Some(bench_add(&mut members, &dgroup, dir, durability, &mut net)?)
    };
    let round_total: Duration = per_member.iter().sum();
    let round_cpu = cpu_per_member
        .iter()
        .copied()
        .collect::<Option<Vec<Duration>>>()
        .map(|v| {
            let total: Duration = v.iter().sum();
            (total / n as u32, v.into_iter().max().unwrap_or_default())
        });
    Ok(RoundFigures {
        n,
        keygen,
        setup,
        setup_bytes,
        setup_messages,
        setup_welcome_bytes,
        round_total,
        round_mean: round_total / n as u32,
        round_max: per_member.iter().copied().max().unwrap_or_default(),
        round_cpu,
        commit_mean: commit_total / n as u32,
        round_bytes: net.bytes - bytes_before,
        round_inputs_per_member: inputs / n,
        add,
    })
}

/// Member 1 adds a newcomer to `members`' DGroup; everyone (the newcomer too) syncs until
/// nothing moves, then every member sends one message and everyone syncs again.
fn bench_add(
    members: &mut Vec<Member>,
    dgroup: &DGroupId,
    dir: &Path,
    durability: Durability,
    net: &mut Net,
) -> Result<AddFigures> {
    let n = members.len();
    let id = "newcomer".to_string();
    let (mut engine, barrier) = open_state_db_with(&dir.join(format!("{id}.db")), durability)?;
    engine.create_identity(&id)?;
    net.stock
        .insert(id.clone(), engine.generate_key_packages(4)?.into());
    net.last_resort
        .insert(id.clone(), engine.generate_last_resort_key_package()?);
    members.push(Member {
        id: id.clone(),
        engine,
        barrier,
    });
    let (bytes0, messages0) = (net.bytes, net.messages);
    let mut cpu: Vec<Option<Duration>> = vec![Some(Duration::ZERO); n + 1];
    let mut measure = |i: usize,
                       m: &mut Member,
                       net: &mut Net,
                       f: &dyn Fn(&mut Member, &mut Net) -> Result<usize>|
     -> Result<usize> {
        let t = Stopwatch::start();
        let moved = f(m, net)?;
        let (_, c) = t.stop();
        cpu[i] = cpu[i].zip(c).map(|(a, b)| a + b);
        Ok(moved)
    };
    let t = Instant::now();
    measure(1, &mut members[1], net, &|m, net| {
        m.engine.add(dgroup, std::slice::from_ref(&id), NOW + 2)?;
        net.drain(m)?;
        Ok(0)
    })?;
    let sync = |m: &mut Member, net: &mut Net| -> Result<usize> {
        let moved = net.deliver(m)?;
        net.drain(m)?;
        Ok(moved)
    };
    let mut rounds = 0;
    let mut spoke = false;
    loop {
        rounds += 1;
        let mut moved = 0;
        for (i, m) in members.iter_mut().enumerate() {
            moved += measure(i, m, net, &sync)?;
        }
        if moved > 0 {
            continue;
        }
        if spoke {
            break;
        }
        // Everyone is in: every member says one thing, once.
        for (i, m) in members.iter_mut().enumerate() {
            measure(i, m, net, &|m, net| {
                m.engine
                    .send(dgroup, dmls_client::engine::TEXT_PLAIN, b"hello", NOW + 3)?;
                net.drain(m)?;
                Ok(0)
            })?;
        }
        spoke = true;
    }
    let total = t.elapsed();
    for m in members.iter() {
        let s = m.engine.status(dgroup)?;
        let joined = s.send_groups.iter().filter(|g| g.joined).count();
        anyhow::ensure!(
            joined == n + 1,
            "{} joined {joined} of {} Send Groups",
            m.id,
            n + 1
        );
        for g in &s.send_groups {
            anyhow::ensure!(
                g.members.contains(&id),
                "{}'s Send Group lacks the newcomer at {}",
                g.owner,
                m.id
            );
        }
        let read = m
            .engine
            .history(dgroup, 10 * n)?
            .iter()
            .filter(|h| h.body == b"hello")
            .count();
        anyhow::ensure!(read == n + 1, "{} has {read} of {} hellos", m.id, n + 1);
    }
    let existing: Option<Vec<Duration>> = cpu[..n].iter().copied().collect();
    Ok(AddFigures {
        total,
        bytes: net.bytes - bytes0,
        messages: net.messages - messages0,
        cpu_existing: existing.map(|v| {
            let sum: Duration = v.iter().sum();
            (sum / n as u32, v.into_iter().max().unwrap_or_default())
        }),
        cpu_newcomer: cpu[n],
        rounds,
    })
}

async fn bench_backlog(
    count: usize,
    dir: &Path,
) -> Result<(Duration, Vec<(Durability, Duration)>)> {
    let db = format!("sqlite://{}", dir.join("relay.db").display());
    let config = dmls_relay::Config::parse_from([
        "dmls-relay",
        "--bind",
        "127.0.0.1:0",
        "--database-url",
        &db,
        "--rate-limit-per-second",
        "0",
        "--registrations-per-minute",
        "0",
    ]);
    let relay = dmls_relay::start(config).await.context("relay")?;
    let url = relay.url();
    let mut a = Client::init(&dir.join("a"), &url, "sender").await?;
    let readers = [
        (Durability::Full, "reader-full"),
        (Durability::BeforeEffects, "reader-batched"),
    ];
    for (_, name) in readers {
        Client::init(&dir.join(name), &url, name).await?;
    }
    let members: Vec<String> = readers.iter().map(|(_, n)| n.to_string()).collect();
    let dgroup = a.create_group("backlog", &members).await?;
    for _ in 0..3 {
        a.sync_once().await?;
        for (_, name) in readers {
            Client::open(&dir.join(name))?.sync_once().await?;
        }
    }
    // The backlog: the sender's engine encrypts everything, then its outbox posts it all.
    let t = Instant::now();
    a.with_engine(move |e| {
        for i in 0..count {
            let body = format!("backlog message number {i:06} with a little padding");
            e.send(
                &dgroup,
                dmls_client::engine::TEXT_PLAIN,
                body.as_bytes(),
                NOW + i as u64,
            )?;
        }
        Ok::<_, dmls_client::engine::EngineError>(())
    })
    .await?;
    a.flush_outbox().await?;
    let send = t.elapsed();
    let mut syncs = Vec::new();
    for (durability, name) in readers {
        let mut b = Client::open_with(&dir.join(name), durability)?;
        b.set_sync_limit(dmls_api::limits::SYNC_LIMIT_MAX);
        b.set_key_package_policy(KeyPackagePolicy::default());
        let t = Instant::now();
        let report = b.sync_once().await?;
        let sync = t.elapsed();
        let got = b.log("backlog", count + 10).await?.len();
        anyhow::ensure!(
            got == count,
            "{name} has {got} of {count} messages ({} fetched)",
            report.messages
        );
        syncs.push((durability, sync));
    }
    relay.shutdown().await?;
    Ok((send, syncs))
}

fn main() -> Result<()> {
    let sizes: Vec<usize> = std::env::var("DMLS_BENCH_SIZES")
        .unwrap_or_else(|_| "8,32,64".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    anyhow::ensure!(
        sizes.iter().all(|&n| n >= 2),
        "DMLS_BENCH_SIZES: a DGroup needs at least 2 members (leave the list empty, e.g. \",\", to run the backlog only)"
    );
    let backlog: usize = std::env::var("DMLS_BENCH_BACKLOG")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000);
    // Durability::Full costs one fsync per received message; measured up to this N.
    let full_max: usize = std::env::var("DMLS_BENCH_FULL_MAX_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(32);

    println!(
        "| N (durability) | key packages (all members) | set-up time | set-up bytes | set-up messages | round: commit per member (mean) | round per member (mean) | round per member (max) | round CPU per member (mean) | round CPU per member (max) | round total | inputs per member | round bytes |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let runs: Vec<(usize, Durability)> = sizes
        .iter()
        .flat_map(|&n| {
            let full = (n <= full_max).then_some((n, Durability::Full));
            full.into_iter()
                .chain(std::iter::once((n, Durability::BeforeEffects)))
        })
        .collect();
    let mut welcome_lines = Vec::new();
    let mut add_lines = Vec::new();
    for (n, durability) in runs {
        let dir = tempfile::tempdir()?;
        let f = bench_round(n, dir.path(), durability)?;
        let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1e3);
        let (cpu_mean, cpu_max) = f
            .round_cpu
            .map_or(("n/a".into(), "n/a".into()), |(a, b)| (ms(a), ms(b)));
        println!(
            "| {} ({durability:?}) | {:.2} s | {:.2} s | {:.2} MB | {} | {:.1} ms | {:.1} ms | {:.1} ms | {cpu_mean} | {cpu_max} | {:.2} s | {} | {:.2} MB |",
            f.n,
            f.keygen.as_secs_f64(),
            f.setup.as_secs_f64(),
            f.setup_bytes as f64 / 1e6,
            f.setup_messages,
            f.commit_mean.as_secs_f64() * 1e3,
            f.round_mean.as_secs_f64() * 1e3,
            f.round_max.as_secs_f64() * 1e3,
            f.round_total.as_secs_f64(),
            f.round_inputs_per_member,
            f.round_bytes as f64 / 1e6,
        );
        if let Some(a) = &f.add {
            let (mean, max) = a
                .cpu_existing
                .map_or(("n/a".into(), "n/a".into()), |(a, b)| (ms(a), ms(b)));
            add_lines.push(format!(
                "| {} ({durability:?}) | {:.2} s | {} | {:.2} MB | {} | {mean} | {max} | {} |",
                f.n,
                a.total.as_secs_f64(),
                a.rounds,
                a.bytes as f64 / 1e6,
                a.messages,
                a.cpu_newcomer.map_or("n/a".into(), ms),
            ));
        }
        let (posted, per_recipient) = f.setup_welcome_bytes;
        welcome_lines.push(format!(
            "N = {} ({durability:?}): set-up bytes {:.2} MB, of which welcomes {:.2} MB (same bytes posted once for all recipients); one welcome per recipient: {:.2} MB set-up, {:.2} MB welcomes",
            f.n,
            f.setup_bytes as f64 / 1e6,
            posted as f64 / 1e6,
            (f.setup_bytes - posted + per_recipient) as f64 / 1e6,
            per_recipient as f64 / 1e6,
        ));
    }
    for line in welcome_lines {
        println!("{line}");
    }
    if !add_lines.is_empty() {
        println!();
        println!(
            "| add one member to N (durability) | until all Send Groups include it, and one message each way | sync rounds | bytes | messages | CPU per existing member (mean) | CPU per existing member (max) | newcomer CPU |"
        );
        println!("|---|---|---|---|---|---|---|---|");
        for line in add_lines {
            println!("{line}");
        }
    }

    if backlog > 0 {
        let dir = tempfile::tempdir()?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let (send, syncs) = rt.block_on(bench_backlog(backlog, dir.path()))?;
        println!(
            "backlog: {backlog} messages encrypted and posted in {:.2} s ({:.0}/s)",
            send.as_secs_f64(),
            backlog as f64 / send.as_secs_f64(),
        );
        for (durability, sync) in syncs {
            println!(
                "backlog ({durability:?}): {backlog} messages synced and decrypted in {:.2} s ({:.0} messages/s)",
                sync.as_secs_f64(),
                backlog as f64 / sync.as_secs_f64()
            );
        }
    }
    Ok(())
}
