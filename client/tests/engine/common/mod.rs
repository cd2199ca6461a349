//! A relay-less network for engine tests: members, outbox draining, and a pool of pending
//! deliveries the test picks from in any order.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::type_complexity,
    dead_code
)]

use std::collections::BTreeMap;
use std::convert::Infallible;

use dmls_client::client::LocalEngine;
use dmls_client::drive::{ClaimAnswer, Transport, perform_outbox};
use dmls_client::engine::{DGroupId, Engine, Event, FollowedGroup, Input};
use futures::executor::block_on;

/// A delivery in flight to one member.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub to: usize,
    pub input: Input,
}

/// Members and the network between them.
pub struct Net {
    pub names: Vec<String>,
    pub engines: Vec<Engine>,
    /// Unclaimed key packages per member.
    pub stock: Vec<Vec<Vec<u8>>>,
    /// Relay groups: (owner, group id hex) -> (members, messages).
    pub groups: BTreeMap<(String, String), (Vec<String>, Vec<Vec<u8>>)>,
    /// Deliveries not yet made.
    pub pool: Vec<Delivery>,
    /// Events seen per member.
    pub events: Vec<Vec<Event>>,
    welcome_ids: u64,
}

impl Net {
    /// `n` members named m0.., each with `kps` key packages, engines seeded from `seed`.
    pub fn new(n: usize, kps: usize, seed: u64) -> Net {
        Self::build(n, kps, seed, None)
    }

    /// Like [`Net::new`], with each member's state in `dir/<name>.db`.
    pub fn with_files(n: usize, kps: usize, seed: u64, dir: &std::path::Path) -> Net {
        Self::build(n, kps, seed, Some(dir))
    }

    fn build(n: usize, kps: usize, seed: u64, dir: Option<&std::path::Path>) -> Net {
        let mut names = Vec::new();
        let mut engines = Vec::new();
        let mut stock = Vec::new();
        for i in 0..n {
            let name = format!("m{i}");
            let mut s = [0u8; 32];
            s[..8].copy_from_slice(&seed.to_be_bytes());
            s[8..16].copy_from_slice(&(i as u64).to_be_bytes());
            let conn = match dir {
                Some(d) => rusqlite::Connection::open(d.join(format!("{name}.db"))).unwrap(),
                None => rusqlite::Connection::open_in_memory().unwrap(),
            };
            let mut e = Engine::open_seeded(conn, s).unwrap();
            e.create_identity(&name).unwrap();
            stock.push(e.generate_key_packages(kps).unwrap());
            engines.push(e);
            names.push(name);
        }
        Net {
            names,
            engines,
            stock,
            groups: BTreeMap::new(),
            pool: Vec::new(),
            events: vec![Vec::new(); n],
            welcome_ids: 0,
        }
    }

    pub fn index(&self, name: &str) -> usize {
        self.names.iter().position(|n| n == name).unwrap()
    }

    /// Performs every outbox item of member `i` (claims are answered at once), with the
    /// library's outbox driver.
    pub fn drain(&mut self, i: usize, now_ms: u64) {
        let mut engine = LocalEngine {
            engine: &mut self.engines[i],
            barrier: None,
            now_ms,
        };
        let mut relay = NetRelay {
            me: i,
            names: &self.names,
            stock: &mut self.stock,
            groups: &mut self.groups,
            pool: &mut self.pool,
            welcome_ids: &mut self.welcome_ids,
        };
        let events = block_on(perform_outbox(&mut engine, &mut relay)).unwrap();
        self.events[i].extend(events);
    }

    /// Whether the pool holds a delivery member `i` can take now (a Welcome, or a message of
    /// a Send Group it follows): if not, a sync of `i` would find nothing new.
    pub fn has_pending(&self, i: usize) -> bool {
        let followed = self.engines[i].followed_groups().unwrap();
        self.pool
            .iter()
            .any(|p| p.to == i && can_take(&followed, &p.input))
    }

    /// Member `i`'s clock-driven duties, driven as a shell does after a sync: tells the engine
    /// whether it caught up (see [`Net::has_pending`]), does what is due at `now_ms`
    /// (`Engine::handle_timeout`) and drains the outbox.
    pub fn tick(&mut self, i: usize, now_ms: u64) {
        let caught_up = !self.has_pending(i);
        self.engines[i].set_caught_up(caught_up);
        let ev = self.engines[i].handle_timeout(now_ms).unwrap();
        self.events[i].extend(ev);
        self.drain(i, now_ms);
    }

    /// Member `i` syncs: takes everything it can from the pool, in pool (relay) order, one
    /// engine batch per round as the facade does, until nothing is left for it; then does
    /// its duties ([`Net::tick`]).
    pub fn sync(&mut self, i: usize, now_ms: u64) -> Result<(), String> {
        loop {
            let followed = self.engines[i].followed_groups().unwrap();
            let ks: Vec<usize> = (0..self.pool.len())
                .filter(|&k| self.pool[k].to == i && can_take(&followed, &self.pool[k].input))
                .collect();
            if ks.is_empty() {
                break;
            }
            self.deliver_batch(&ks, now_ms)?;
        }
        self.tick(i, now_ms);
        Ok(())
    }

    /// Drains every member's outbox.
    pub fn drain_all(&mut self, now_ms: u64) {
        for i in 0..self.engines.len() {
            self.drain(i, now_ms);
        }
    }

    /// Delivers pool entry `k` (removing it unless `keep` for a duplicate).
    pub fn deliver(&mut self, k: usize, keep: bool, now_ms: u64) -> Result<(), String> {
        // A member polls a Send Group only once it knows the DGroup (a relay keeps the
        // message until then).
        let followed = self.engines[self.pool[k].to].followed_groups().unwrap();
        if !can_take(&followed, &self.pool[k].input) {
            return Ok(());
        }
        let d = if keep {
            self.pool[k].clone()
        } else {
            self.pool.remove(k)
        };
        match self.engines[d.to].handle(d.input.clone(), now_ms) {
            Ok(ev) => {
                self.events[d.to].extend(ev);
                Ok(())
            }
            Err(e) => Err(format!(
                "{} rejected {:?}: {e}",
                self.names[d.to],
                short(&d.input)
            )),
        }
    }

    /// Delivers the pool entries `ks` (all for the same member) in one
    /// `Engine::handle_batch`, in the order given, removing them from the pool.
    pub fn deliver_batch(&mut self, ks: &[usize], now_ms: u64) -> Result<(), String> {
        let Some(&first) = ks.first() else {
            return Ok(());
        };
        let to = self.pool[first].to;
        let followed = self.engines[to].followed_groups().unwrap();
        let mut take = Vec::new();
        for &k in ks {
            assert_eq!(self.pool[k].to, to, "a batch is for one member");
            // As in `deliver`: a group is polled only once its DGroup is known.
            if can_take(&followed, &self.pool[k].input) {
                take.push(k);
            }
        }
        let inputs: Vec<Input> = take.iter().map(|&k| self.pool[k].input.clone()).collect();
        let mut sorted = take.clone();
        sorted.sort_unstable_by(|a, b| b.cmp(a));
        for k in sorted {
            self.pool.remove(k);
        }
        let shorts: Vec<String> = inputs.iter().map(short).collect();
        let results = self.engines[to]
            .handle_batch(inputs, now_ms)
            .map_err(|e| format!("{}: batch failed: {e}", self.names[to]))?;
        for (r, what) in results.into_iter().zip(shorts) {
            match r {
                Ok(ev) => self.events[to].extend(ev),
                Err(e) => {
                    return Err(format!(
                        "{} rejected {what} in a batch: {e}",
                        self.names[to]
                    ));
                }
            }
        }
        Ok(())
    }

    /// Delivers everything, draining outboxes, until nothing is left.
    pub fn settle(&mut self, now_ms: u64) {
        let left = self.settle_leaving(now_ms);
        assert!(left == 0, "settle: {left} deliveries can never be made");
    }

    /// Like [`Net::settle`], but stops when the deliveries left cannot be made yet (for
    /// members that do not follow their Send Group: they do not know its DGroup, e.g. they
    /// were not added yet). Returns how many are left in the pool.
    pub fn settle_leaving(&mut self, now_ms: u64) -> usize {
        self.settle_holding(now_ms, |_| false);
        self.pool.len()
    }

    /// Like [`Net::settle_leaving`], but takes the deliveries that `hold` picks out of the
    /// pool instead of making them, and returns them.
    pub fn settle_holding(
        &mut self,
        now_ms: u64,
        hold: impl Fn(&Delivery) -> bool,
    ) -> Vec<Delivery> {
        let mut held = Vec::new();
        loop {
            self.drain_all(now_ms);
            let mut progressed = false;
            let mut k = 0;
            while k < self.pool.len() {
                if hold(&self.pool[k]) {
                    held.push(self.pool.remove(k));
                    progressed = true;
                    continue;
                }
                let len = self.pool.len();
                self.deliver(k, false, now_ms).unwrap();
                if self.pool.len() < len {
                    progressed = true;
                } else {
                    k += 1;
                }
            }
            if !progressed {
                return held;
            }
        }
    }

    /// Makes every pending delivery to member `i`, in pool order, one `Engine::handle` each,
    /// and leaves the others in the pool.
    pub fn deliver_to(&mut self, i: usize, now_ms: u64) {
        let (mine, rest): (Vec<_>, Vec<_>) = self.pool.drain(..).partition(|p| p.to == i);
        self.pool = rest;
        for p in mine {
            let ev = self.engines[i].handle(p.input, now_ms).unwrap();
            self.events[i].extend(ev);
        }
    }

    /// The DGroup id as seen by member `i` (its first DGroup).
    pub fn dgroup(&self, i: usize) -> DGroupId {
        self.engines[i].dgroups().unwrap()[0].id
    }
}

/// The network as the transport of member `me`'s outbox: claims are answered from the
/// stock, posts become deliveries in the pool.
struct NetRelay<'a> {
    me: usize,
    names: &'a [String],
    stock: &'a mut [Vec<Vec<u8>>],
    groups: &'a mut BTreeMap<(String, String), (Vec<String>, Vec<Vec<u8>>)>,
    pool: &'a mut Vec<Delivery>,
    welcome_ids: &'a mut u64,
}

impl NetRelay<'_> {
    fn index(&self, name: &str) -> usize {
        self.names.iter().position(|n| n == name).unwrap()
    }
}

impl Transport for NetRelay<'_> {
    type Error = Infallible;

    async fn claim_key_packages(
        &mut self,
        client_ids: Vec<String>,
    ) -> Result<ClaimAnswer, Infallible> {
        let mut answer = ClaimAnswer::default();
        for c in client_ids {
            let j = self.index(&c);
            match self.stock[j].pop() {
                Some(kp) => answer.key_packages.push((c, kp)),
                None => answer.missing.push(c),
            }
        }
        Ok(answer)
    }

    async fn put_relay_group(
        &mut self,
        group_id: String,
        members: Vec<String>,
    ) -> Result<(), Infallible> {
        let me = self.names[self.me].clone();
        self.groups.entry((me, group_id)).or_default().0 = members;
        Ok(())
    }

    async fn post_welcomes(&mut self, welcomes: Vec<(String, Vec<u8>)>) -> Result<(), Infallible> {
        for (to, data) in welcomes {
            *self.welcome_ids += 1;
            let j = self.index(&to);
            self.pool.push(Delivery {
                to: j,
                input: Input::Welcome {
                    inbox_id: Some(*self.welcome_ids),
                    from: self.names[self.me].clone(),
                    data,
                },
            });
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
        let g = self
            .groups
            .entry((owner.clone(), group_id.clone()))
            .or_default();
        g.1.push(data.clone());
        let seq = g.1.len() as u64;
        let mut readers: Vec<String> = g.0.clone();
        readers.push(owner.clone());
        for r in readers {
            if r == self.names[self.me] {
                continue;
            }
            let j = self.index(&r);
            self.pool.push(Delivery {
                to: j,
                input: Input::GroupMessage {
                    owner: owner.clone(),
                    group_id: group_id.clone(),
                    seq: Some(seq),
                    data: data.clone(),
                },
            });
        }
        Ok(())
    }

    fn is_permanent(&self, e: &Infallible) -> bool {
        match *e {}
    }
}

/// Whether a member following `followed` would fetch `input`: a relay keeps a Send Group's
/// messages until the member knows its DGroup and polls it.
/// The bodies of the application messages member `i` decrypted, in order.
pub fn messages(net: &Net, i: usize) -> Vec<Vec<u8>> {
    net.events[i]
        .iter()
        .filter_map(|e| match e {
            Event::Message(m) => Some(m.body.clone()),
            _ => None,
        })
        .collect()
}

pub fn can_take(followed: &[FollowedGroup], input: &Input) -> bool {
    match input {
        Input::GroupMessage {
            owner, group_id, ..
        } => followed
            .iter()
            .any(|f| f.owner == *owner && f.group_id == *group_id),
        _ => true,
    }
}

pub fn short(i: &Input) -> String {
    match i {
        Input::GroupMessage { owner, seq, .. } => format!("message {owner} #{seq:?}"),
        Input::Welcome { from, .. } => format!("welcome from {from}"),
        Input::ClaimedKeyPackages { outbox_id, .. } => format!("claim {outbox_id}"),
    }
}
