//! Load benchmark of a running relay over loopback.
//!
//! `cargo bench -p dmls-relay --bench relay_load -- --url http://127.0.0.1:8080` drives a relay
//! started with `--rate-limit-per-second 0 --registrations-per-minute 0`; `--spawn sqlite` or
//! `--spawn postgres://...` starts one in this process instead. Three phases, each bounded in count
//! and time: appends of 1 KiB messages, `sync` over 1,000 followed groups with nothing new, and
//! long-poll wake-ups. With `--idle-waiters N`, N clients first each open one long poll on their
//! empty inbox and keep it open (a new one when it ends) while the wake-up phase runs; the
//! relay's resident memory before and with them waiting (`--relay-pid`) gives the memory per
//! idle long poll. Only 127.0.0.1 / localhost is accepted as a target.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail, ensure};
use clap::Parser;
use dmls_api::{PostMessageResponse, RegisterResponse, SyncResponse};
use futures::StreamExt;
use serde_json::{Value, json};

#[derive(Parser, Debug)]
#[command(
    name = "relay_load",
    about = "Load benchmark of a DMLS relay on 127.0.0.1"
)]
struct Args {
    /// URL of a running relay (127.0.0.1 or localhost only).
    #[arg(long, conflicts_with = "spawn", required_unless_present = "spawn")]
    url: Option<String>,
    /// Start a relay in this process instead: `sqlite` (temporary file) or a `postgres://` URL.
    #[arg(long)]
    spawn: Option<String>,
    /// Concurrent appending clients (each posts into its own group).
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Appends in the append phase.
    #[arg(long, default_value_t = 20_000)]
    appends: u64,
    /// Size of each appended message.
    #[arg(long, default_value_t = 1024)]
    message_bytes: usize,
    /// Groups each syncing client follows.
    #[arg(long, default_value_t = 1000)]
    sync_groups: usize,
    /// Concurrent syncing clients.
    #[arg(long, default_value_t = 8)]
    sync_clients: usize,
    /// `sync` requests in the sync phase.
    #[arg(long, default_value_t = 2000)]
    syncs: u64,
    /// Concurrent waiter/poster pairs in the wake-up phase.
    #[arg(long, default_value_t = 8)]
    wake_pairs: usize,
    /// Wake-ups measured in the wake-up phase.
    #[arg(long, default_value_t = 400)]
    wakeups: u64,
    /// Time a waiter gets to reach the relay before its poster posts, in milliseconds.
    #[arg(long, default_value_t = 25)]
    settle_ms: u64,
    /// Requests of the HTTP ceiling phase: `GET /healthz` from `--clients` concurrent
    /// clients, the same load generator as the append phase (0: skip). Later phases print their
    /// throughput as a share of it.
    #[arg(long, default_value_t = 50_000)]
    ceiling_requests: u64,
    /// Clients that each keep one idle long poll open during the wake-up phase (0: none).
    #[arg(long, default_value_t = 0)]
    idle_waiters: usize,
    /// The idle clients of `--idle-waiters` keep a push stream (`POST /v1/stream`) open
    /// instead of a long poll.
    #[arg(long)]
    idle_streams: bool,
    /// Process id of the relay at `--url`, whose resident memory is read from /proc (Linux):
    /// its peak during the append and sync phases, and before and with the idle waiters.
    #[arg(long)]
    relay_pid: Option<u32>,
    /// Longest time of each phase, in seconds (a phase stops early when it is reached).
    #[arg(long, default_value_t = 60)]
    max_phase_secs: u64,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _temp_dir;
    let mut spawned = None;
    let url = match (&args.url, &args.spawn) {
        (Some(url), _) => {
            check_loopback(url)?;
            url.trim_end_matches('/').to_string()
        }
        (None, Some(spawn)) => {
            let database_url = if spawn == "sqlite" {
                let dir = tempfile::tempdir()?;
                let url = format!("sqlite://{}", dir.path().join("relay_load.db").display());
                _temp_dir = dir;
                url
            } else {
                spawn.clone()
            };
            let config = dmls_relay::Config::parse_from([
                "dmls-relay",
                "--bind",
                "127.0.0.1:0",
                "--database-url",
                &database_url,
                "--rate-limit-per-second",
                "0",
                "--registrations-per-minute",
                "0",
            ]);
            let relay = dmls_relay::start(config)
                .await
                .context("starting the relay")?;
            let url = relay.url();
            spawned = Some(relay);
            println!(
                "spawned relay at {url} on {}",
                dmls_relay::testing::redact_url(&database_url)
            );
            url
        }
        (None, None) => bail!("give --url or --spawn"),
    };
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .timeout(Duration::from_secs(60))
        .build()?;
    let bench = Bench {
        http,
        url,
        tag: run_tag(),
        max_phase: Duration::from_secs(args.max_phase_secs),
        ceiling: std::sync::Mutex::new(None),
        pid: args.relay_pid,
    };
    println!(
        "cores: {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );

    // A count of 0 skips its phase.
    if args.ceiling_requests > 0 {
        bench.ceiling_phase(&args).await?;
    }
    if args.appends > 0 {
        bench.append_phase(&args).await?;
    }
    if args.syncs > 0 {
        bench.sync_phase(&args).await?;
    }
    let idle = if args.idle_waiters > 0 {
        Some(bench.open_idle_waiters(&args).await?)
    } else {
        None
    };
    if args.wakeups > 0 {
        bench.wake_phase(&args).await?;
    }
    if let Some(idle) = idle {
        idle.close(&bench).await?;
    }

    if let Some(relay) = spawned {
        relay.shutdown().await?;
    }
    Ok(())
}

fn check_loopback(url: &str) -> anyhow::Result<()> {
    let rest = url
        .strip_prefix("http://")
        .context("--url must be http://127.0.0.1:PORT")?;
    let host = rest.split(['/', ':']).next().unwrap_or_default();
    ensure!(
        host == "127.0.0.1" || host == "localhost",
        "only 127.0.0.1 or localhost may be benchmarked, not {host}"
    );
    Ok(())
}

/// A short tag making this run's client ids and group ids unique on a relay used before.
fn run_tag() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{:x}", nanos % (1 << 40))
}

#[derive(Clone)]
struct Client {
    id: String,
    token: String,
}

struct Bench {
    http: reqwest::Client,
    url: String,
    tag: String,
    max_phase: Duration,
    /// Requests per second of the ceiling phase, once measured.
    ceiling: std::sync::Mutex<Option<f64>>,
    /// The relay's process (`--relay-pid`), for its memory.
    pid: Option<u32>,
}

impl Bench {
    async fn register(&self, name: &str) -> anyhow::Result<Client> {
        let id = format!("load-{}-{name}", self.tag);
        let resp = self
            .http
            .post(format!("{}/v1/clients", self.url))
            .json(&json!({ "client_id": id }))
            .send()
            .await?;
        ensure!(
            resp.status().as_u16() == 201,
            "registering {id}: {} (start the relay with --registrations-per-minute 0 --rate-limit-per-second 0)",
            resp.status()
        );
        let body: RegisterResponse = resp.json().await?;
        Ok(Client {
            id,
            token: body.token,
        })
    }

    async fn register_many(&self, prefix: &str, n: usize) -> anyhow::Result<Vec<Client>> {
        let clients: Vec<anyhow::Result<Client>> = futures::stream::iter(0..n)
            .map(|i| async move { self.register(&format!("{prefix}{i}")).await })
            .buffered(16)
            .collect()
            .await;
        clients.into_iter().collect()
    }

    async fn put_group(
        &self,
        owner: &Client,
        group_id: &str,
        members: &[String],
    ) -> anyhow::Result<()> {
        let resp = self
            .http
            .put(format!("{}/v1/groups/{}/{group_id}", self.url, owner.id))
            .bearer_auth(&owner.token)
            .json(&json!({ "members": members }))
            .send()
            .await?;
        ensure!(
            resp.status().is_success(),
            "creating group {group_id}: {}",
            resp.status()
        );
        Ok(())
    }

    async fn post(
        &self,
        sender: &Client,
        owner: &str,
        group_id: &str,
        body: Vec<u8>,
    ) -> anyhow::Result<u64> {
        let resp = self
            .http
            .post(format!(
                "{}/v1/groups/{owner}/{group_id}/messages",
                self.url
            ))
            .bearer_auth(&sender.token)
            .header("content-type", "application/octet-stream")
            .body(body)
            .send()
            .await?;
        ensure!(resp.status().as_u16() == 201, "posting: {}", resp.status());
        Ok(resp.json::<PostMessageResponse>().await?.seq)
    }

    async fn sync(&self, client: &Client, request: &Value) -> anyhow::Result<SyncResponse> {
        let resp = self
            .http
            .post(format!("{}/v1/sync", self.url))
            .bearer_auth(&client.token)
            .json(request)
            .send()
            .await?;
        ensure!(resp.status().as_u16() == 200, "sync: {}", resp.status());
        Ok(resp.json().await?)
    }

    fn group_id(&self, kind: u8, i: usize) -> String {
        format!(
            "{kind:02x}{:016x}{i:08x}",
            u64::from_str_radix(&self.tag, 16).unwrap_or(0)
        )
    }

    /// `GET /healthz` from `--clients` concurrent clients as fast as answers come back: what the
    /// HTTP stack and this load generator reach without storage.
    async fn ceiling_phase(&self, args: &Args) -> anyhow::Result<()> {
        let issued = Arc::new(AtomicU64::new(0));
        let deadline = Instant::now() + self.max_phase;
        let started = Instant::now();
        let url = format!("{}/healthz", self.url);
        let workers = (0..args.clients).map(|_| {
            let issued = issued.clone();
            let url = &url;
            async move {
                let mut latencies = Vec::new();
                let mut errors = 0u64;
                while issued.fetch_add(1, Ordering::Relaxed) < args.ceiling_requests
                    && Instant::now() < deadline
                {
                    let t0 = Instant::now();
                    let answered = async {
                        let resp = self.http.get(url).send().await.ok()?;
                        let ok = resp.status().is_success();
                        resp.bytes().await.ok().filter(|_| ok)
                    };
                    match answered.await {
                        Some(_) => latencies.push(t0.elapsed()),
                        None => errors += 1,
                    }
                }
                (latencies, errors)
            }
        });
        let results = futures::future::join_all(workers).await;
        let elapsed = started.elapsed();
        let errors: u64 = results.iter().map(|r| r.1).sum();
        let mut latencies: Vec<Duration> = results.into_iter().flat_map(|r| r.0).collect();
        let rate = latencies.len() as f64 / elapsed.as_secs_f64();
        self.report(
            &format!(
                "HTTP ceiling, GET /healthz, {} concurrent clients",
                args.clients
            ),
            &mut latencies,
            elapsed,
            errors,
        );
        if let Ok(mut ceiling) = self.ceiling.lock() {
            *ceiling = Some(rate);
        }
        Ok(())
    }

    /// [`report`], plus the throughput as a share of the HTTP ceiling when it was measured.
    fn report(&self, what: &str, latencies: &mut [Duration], elapsed: Duration, errors: u64) {
        report(what, latencies, elapsed, errors);
        let ceiling = self.ceiling.lock().ok().and_then(|c| *c);
        if let Some(ceiling) = ceiling.filter(|c| *c > 0.0) {
            let rate = latencies.len() as f64 / elapsed.as_secs_f64();
            println!(
                "  ({:.2} of the HTTP ceiling of {ceiling:.0}/s)",
                rate / ceiling
            );
        }
    }

    /// Samples the relay's resident memory every 100 ms until `done` resolves; returns the peak.
    async fn peak_memory<T>(&self, done: impl std::future::Future<Output = T>) -> (T, Option<u64>) {
        let Some(pid) = self.pid else {
            return (done.await, None);
        };
        let mut peak = resident_kib(pid).ok();
        let mut done = std::pin::pin!(done);
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                out = &mut done => {
                    let last = resident_kib(pid).ok();
                    return (out, peak.max(last));
                }
                _ = tick.tick() => peak = peak.max(resident_kib(pid).ok()),
            }
        }
    }

    /// Each client appends 1 KiB messages into its own group as fast as answers come back.
    async fn append_phase(&self, args: &Args) -> anyhow::Result<()> {
        let clients = self.register_many("a", args.clients).await?;
        for (i, c) in clients.iter().enumerate() {
            self.put_group(c, &self.group_id(1, i), &[]).await?;
        }
        let issued = Arc::new(AtomicU64::new(0));
        let deadline = Instant::now() + self.max_phase;
        let started = Instant::now();
        let workers = clients.iter().enumerate().map(|(i, c)| {
            let issued = issued.clone();
            let group_id = self.group_id(1, i);
            let body = vec![0xa5u8; args.message_bytes];
            async move {
                let mut latencies = Vec::new();
                let mut errors = 0u64;
                while issued.fetch_add(1, Ordering::Relaxed) < args.appends
                    && Instant::now() < deadline
                {
                    let t0 = Instant::now();
                    match self.post(c, &c.id, &group_id, body.clone()).await {
                        Ok(_) => latencies.push(t0.elapsed()),
                        Err(e) => {
                            if errors == 0 {
                                eprintln!("append error: {e:#}");
                            }
                            errors += 1;
                        }
                    }
                }
                (latencies, errors)
            }
        });
        let (results, peak) = self.peak_memory(futures::future::join_all(workers)).await;
        let elapsed = started.elapsed();
        let errors: u64 = results.iter().map(|r| r.1).sum();
        let mut latencies: Vec<Duration> = results.into_iter().flat_map(|r| r.0).collect();
        self.report(
            &format!(
                "append {} B, {} concurrent clients",
                args.message_bytes, args.clients
            ),
            &mut latencies,
            elapsed,
            errors,
        );
        print_peak(peak);
        Ok(())
    }

    /// Clients follow many groups, each with one old message, and sync with nothing new.
    async fn sync_phase(&self, args: &Args) -> anyhow::Result<()> {
        let followers = self.register_many("s", args.sync_clients).await?;
        let owners = self.register_many("o", 16).await?;
        let member_ids: Vec<String> = followers.iter().map(|c| c.id.clone()).collect();
        let setup = Instant::now();
        let created: Vec<anyhow::Result<u64>> = futures::stream::iter(0..args.sync_groups)
            .map(|i| {
                let owner = &owners[i % owners.len()];
                let member_ids = &member_ids;
                async move {
                    let group_id = self.group_id(2, i);
                    self.put_group(owner, &group_id, member_ids).await?;
                    self.post(owner, &owner.id, &group_id, b"old".to_vec())
                        .await
                }
            })
            .buffer_unordered(16)
            .collect()
            .await;
        created.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
        println!(
            "  (set up {} followed groups in {:.1?})",
            args.sync_groups,
            setup.elapsed()
        );
        let cursors: Vec<Value> = (0..args.sync_groups)
            .map(|i| json!({ "owner": owners[i % owners.len()].id, "group_id": self.group_id(2, i), "after": 1 }))
            .collect();
        let request = json!({ "groups": cursors, "welcomes_after": 0 });

        let issued = Arc::new(AtomicU64::new(0));
        let deadline = Instant::now() + self.max_phase;
        let started = Instant::now();
        let workers = followers.iter().map(|c| {
            let issued = issued.clone();
            let request = &request;
            async move {
                let mut latencies = Vec::new();
                let mut errors = 0u64;
                while issued.fetch_add(1, Ordering::Relaxed) < args.syncs
                    && Instant::now() < deadline
                {
                    let t0 = Instant::now();
                    match self.sync(c, request).await {
                        Ok(answer) if answer.groups.is_empty() => latencies.push(t0.elapsed()),
                        Ok(answer) => {
                            eprintln!(
                                "sync found news where none was expected: {} groups",
                                answer.groups.len()
                            );
                            errors += 1;
                        }
                        Err(e) => {
                            if errors == 0 {
                                eprintln!("sync error: {e:#}");
                            }
                            errors += 1;
                        }
                    }
                }
                (latencies, errors)
            }
        });
        let (results, peak) = self.peak_memory(futures::future::join_all(workers)).await;
        let elapsed = started.elapsed();
        let errors: u64 = results.iter().map(|r| r.1).sum();
        let mut latencies: Vec<Duration> = results.into_iter().flat_map(|r| r.0).collect();
        self.report(
            &format!(
                "sync {} groups, nothing new, {} concurrent clients",
                args.sync_groups, args.sync_clients
            ),
            &mut latencies,
            elapsed,
            errors,
        );
        print_peak(peak);
        Ok(())
    }

    /// Pairs of a waiter in a long poll and a poster: how soon after a post does the waiter answer?
    async fn wake_phase(&self, args: &Args) -> anyhow::Result<()> {
        let posters = self.register_many("p", args.wake_pairs).await?;
        let waiters = self.register_many("w", args.wake_pairs).await?;
        for (i, (p, w)) in posters.iter().zip(&waiters).enumerate() {
            self.put_group(p, &self.group_id(3, i), std::slice::from_ref(&w.id))
                .await?;
        }
        let issued = Arc::new(AtomicU64::new(0));
        let deadline = Instant::now() + self.max_phase;
        let pairs = posters.iter().zip(&waiters).enumerate().map(|(i, (poster, waiter))| {
            let issued = issued.clone();
            let group_id = self.group_id(3, i);
            async move {
                let mut from_start = Vec::new();
                let mut from_ack = Vec::new();
                let mut after = 0;
                let mut errors = 0u64;
                while issued.fetch_add(1, Ordering::Relaxed) < args.wakeups && Instant::now() < deadline {
                    let request = json!({
                        "groups": [{ "owner": poster.id, "group_id": group_id, "after": after }],
                        "wait_ms": 10_000,
                    });
                    let wait = async {
                        let answer = self.sync(waiter, &request).await;
                        (answer, Instant::now())
                    };
                    let post = async {
                        tokio::time::sleep(Duration::from_millis(args.settle_ms)).await;
                        let t0 = Instant::now();
                        let seq = self.post(poster, &poster.id, &group_id, vec![1u8; 64]).await;
                        (seq, t0, Instant::now())
                    };
                    let ((answer, answered), (seq, post_start, acked)) = tokio::join!(wait, post);
                    match (answer, seq) {
                        (Ok(answer), Ok(seq)) if answer.groups.first().is_some_and(|g| !g.messages.is_empty()) => {
                            from_start.push(answered.saturating_duration_since(post_start));
                            from_ack.push(answered.saturating_duration_since(acked));
                            after = seq;
                        }
                        (answer, seq) => {
                            if errors == 0 {
                                eprintln!("wake-up failed: answer {:?}, post {:?}", answer.map(|a| a.groups.len()), seq);
                            }
                            errors += 1;
                            if let Ok(seq) = seq {
                                after = seq;
                            }
                        }
                    }
                }
                (from_start, from_ack, errors)
            }
        });
        let started = Instant::now();
        let results = futures::future::join_all(pairs).await;
        let elapsed = started.elapsed();
        let errors: u64 = results.iter().map(|r| r.2).sum();
        let mut from_start: Vec<Duration> = results.iter().flat_map(|r| r.0.clone()).collect();
        let mut from_ack: Vec<Duration> = results.into_iter().flat_map(|r| r.1).collect();
        let what = format!("long-poll wake-up, {} pairs", args.wake_pairs);
        report(
            &format!("{what}, post start -> waiter answer"),
            &mut from_start,
            elapsed,
            errors,
        );
        report(
            &format!("{what}, post ack -> waiter answer (0 if before the ack)"),
            &mut from_ack,
            elapsed,
            errors,
        );
        Ok(())
    }
}

/// Resident memory of a process in KiB (`VmRSS` of /proc/PID/status).
fn resident_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("no VmRSS line")?;
    line.split_whitespace()
        .nth(1)
        .context("malformed VmRSS line")?
        .parse()
        .context("malformed VmRSS value")
}

/// Idle long polls kept open by [`Bench::open_idle_waiters`].
struct IdleWaiters {
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<u64>>,
    pid: Option<u32>,
    before_kib: Option<u64>,
    n: usize,
}

impl IdleWaiters {
    /// Stops them (each ends at once by an aborted request) and reports the relay's memory.
    async fn close(self, bench: &Bench) -> anyhow::Result<()> {
        let with_kib = self.pid.map(resident_kib).transpose()?;
        self.stop.send_replace(true);
        let mut errors = 0;
        for task in self.tasks {
            task.abort();
            errors += task.await.unwrap_or(0);
        }
        if let (Some(before), Some(after)) = (self.before_kib, with_kib) {
            println!(
                "idle long polls at the end of the run: relay resident {after} KiB (was {before} KiB before), {:.1} KiB per waiter; {errors} failed polls",
                after.saturating_sub(before) as f64 / self.n as f64
            );
        }
        let _ = bench;
        Ok(())
    }
}

impl Bench {
    /// Waiting long polls (or open push streams) on the relay, as its index page shows them.
    async fn relay_waiting(&self, streams: bool) -> anyhow::Result<usize> {
        let page = self
            .http
            .get(format!("{}/", self.url))
            .send()
            .await?
            .text()
            .await?;
        let label = if streams {
            "Push streams open: "
        } else {
            "Long polls waiting: "
        };
        let rest = page
            .split(label)
            .nth(1)
            .with_context(|| format!("the index page shows no {label:?}"))?;
        Ok(rest[..rest.find('<').unwrap_or(rest.len())]
            .trim()
            .parse()?)
    }

    /// Registers `--idle-waiters` clients and has each keep one long poll on its (empty)
    /// inbox open; reports the relay's resident memory per waiting long poll.
    async fn open_idle_waiters(&self, args: &Args) -> anyhow::Result<IdleWaiters> {
        let n = args.idle_waiters;
        let setup = Instant::now();
        let clients = self.register_many("i", n).await?;
        println!("  (registered {n} idle clients in {:.1?})", setup.elapsed());
        let pid = args.relay_pid;
        if pid.is_none() {
            println!("  (no --relay-pid: the relay's memory is not measured)");
        }
        let streams = args.idle_streams;
        let what = if streams {
            "push streams"
        } else {
            "long polls"
        };
        let waiting_before = self.relay_waiting(streams).await?;
        let before_kib = pid.map(resident_kib).transpose()?;
        let (stop, stopped) = tokio::sync::watch::channel(false);
        // Their own connection pool, so the wake-up phase's connections stay apart.
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(n)
            .timeout(Duration::from_secs(60))
            .build()?;
        let started = Instant::now();
        let tasks = clients
            .into_iter()
            .map(|c| {
                let http = http.clone();
                let url = format!(
                    "{}/v1/{}",
                    self.url,
                    if streams { "stream" } else { "sync" }
                );
                let mut stopped = stopped.clone();
                tokio::spawn(async move {
                    let mut errors = 0u64;
                    let request = if streams {
                        json!({ "groups": [], "welcomes_after": 0 })
                    } else {
                        json!({ "groups": [], "welcomes_after": 0, "wait_ms": 30_000 })
                    };
                    while !*stopped.borrow_and_update() {
                        let poll = async {
                            let mut resp = http
                                .post(&url)
                                .bearer_auth(&c.token)
                                .json(&request)
                                .send()
                                .await?;
                            if resp.status().is_success() {
                                // A stream: read it until it ends.
                                while resp.chunk().await?.is_some() {}
                            }
                            Ok::<_, reqwest::Error>(resp.status())
                        };
                        tokio::select! {
                            _ = stopped.changed() => break,
                            answer = poll => match answer {
                                Ok(status) if status.is_success() => {}
                                _ => {
                                    errors += 1;
                                    tokio::time::sleep(Duration::from_secs(1)).await;
                                }
                            },
                        }
                    }
                    errors
                })
            })
            .collect();
        loop {
            let waiting = self
                .relay_waiting(streams)
                .await?
                .saturating_sub(waiting_before);
            if waiting >= n {
                break;
            }
            ensure!(
                started.elapsed() < self.max_phase,
                "only {waiting} of {n} idle {what} waited after {:?}",
                self.max_phase
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        println!(
            "  ({n} idle {what} waiting after {:.1?})",
            started.elapsed()
        );
        // Let allocations settle, then measure.
        tokio::time::sleep(Duration::from_secs(1)).await;
        if let (Some(pid), Some(before)) = (pid, before_kib) {
            let after = resident_kib(pid)?;
            println!(
                "idle {what}: {n} waiting; relay resident {before} KiB -> {after} KiB: {:.1} KiB per waiter",
                after.saturating_sub(before) as f64 / n as f64
            );
        }
        Ok(IdleWaiters {
            stop,
            tasks,
            pid,
            before_kib,
            n,
        })
    }
}

fn print_peak(peak_kib: Option<u64>) {
    if let Some(kib) = peak_kib {
        println!(
            "  (relay resident memory during the phase: peak {:.1} MiB)",
            kib as f64 / 1024.0
        );
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn report(what: &str, latencies: &mut [Duration], elapsed: Duration, errors: u64) {
    latencies.sort_unstable();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{what}: n={} errors={errors} elapsed={:.2}s throughput={:.0}/s p50={:.2}ms p99={:.2}ms max={:.2}ms",
        latencies.len(),
        elapsed.as_secs_f64(),
        latencies.len() as f64 / elapsed.as_secs_f64(),
        ms(percentile(latencies, 50.0)),
        ms(percentile(latencies, 99.0)),
        ms(latencies.last().copied().unwrap_or_default()),
    );
}
