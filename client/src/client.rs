//! The client facade: one identity, its durable state and its relay, for embedders and the CLI.
//!
//! A [`Client`] owns a state directory (`<home>/state.db`, the engine's SQLite database, and
//! `<home>/config.json` with the relay URL, the client id and the token, mode 0600). It drives
//! the sans-I/O [`Engine`]: it fetches from the relay and feeds the engine in relay order,
//! then carries out the engine's durable outbox. Crash safety comes from the engine: it stores
//! each relay cursor in the same transaction as the state that message produced, and writes
//! every effect to the outbox in the transaction that caused it. This module never moves a
//! cursor itself, and drains the outbox at the start of every command.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dmls_api::{SyncGroupCursor, SyncRequest};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::engine::{
    DGroupId, DGroupStatus, DGroupSummary, DutyPolicy, Effect, Engine, EngineError, Event, Input,
    ReceivedMessage,
};
use crate::relay::{RelayClient, RelayError, Token};

/// File name of the engine database inside the home directory.
pub const STATE_FILE: &str = "state.db";
/// File name of the configuration inside the home directory.
pub const CONFIG_FILE: &str = "config.json";

/// How many key packages to keep on the relay: top up to `target` when below `low_water`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyPackagePolicy {
    /// Top up when the relay holds fewer than this many.
    pub low_water: u64,
    /// Top up to this many.
    pub target: u64,
}

impl Default for KeyPackagePolicy {
    fn default() -> Self {
        KeyPackagePolicy {
            low_water: 10,
            target: 20,
        }
    }
}

/// Errors of the facade.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The home directory holds no identity.
    #[error("no identity in {}: run `dmls init --relay URL --name NAME` first", .home.display())]
    NoIdentity {
        /// The home directory.
        home: PathBuf,
    },
    /// `init` on a home directory that already holds an identity.
    #[error("{} already holds the identity {client_id:?}; use another --home for another identity", .home.display())]
    AlreadyInitialised {
        /// The home directory.
        home: PathBuf,
        /// The identity it holds.
        client_id: String,
    },
    /// The name is taken on the relay.
    #[error("the name {0:?} is already registered on this relay; choose another --name")]
    NameTaken(String),
    /// No DGroup matches the name or id given.
    #[error("no group named {0:?} or with an id starting with it; `dmls groups` lists them")]
    UnknownGroup(String),
    /// Several DGroups match the name or id prefix given.
    #[error("{query:?} matches several groups ({}); give more of the id", .candidates.join(", "))]
    AmbiguousGroup {
        /// What was asked for.
        query: String,
        /// Ids of the matching DGroups.
        candidates: Vec<String>,
    },
    /// Bad input from the caller; nothing was changed.
    #[error("{0}")]
    InvalidInput(String),
    /// The relay failed or refused.
    #[error(transparent)]
    Relay(#[from] RelayError),
    /// The engine failed or refused.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The state database could not be opened.
    #[error("cannot open the state database {}: {source}", .path.display())]
    Database {
        /// Path of the database.
        path: PathBuf,
        /// The SQLite error.
        #[source]
        source: rusqlite::Error,
    },
    /// A file of the home directory could not be read or written.
    #[error("{}: {source}", .path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// `config.json` is not valid.
    #[error("{} is damaged: {detail}", .path.display())]
    BadConfig {
        /// Path of the configuration file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
}

/// The contents of `config.json`. `Debug` hides the token.
#[derive(Clone, Serialize, Deserialize)]
pub struct ClientConfig {
    /// Base URL of the relay.
    pub relay_url: String,
    /// Our client id (relay account and MLS identity).
    pub client_id: String,
    /// Bearer token of the relay account.
    pub token: String,
}

impl std::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConfig")
            .field("relay_url", &self.relay_url)
            .field("client_id", &self.client_id)
            .field("token", &"<redacted>")
            .finish()
    }
}

/// Whether what a command produced has reached the relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// Everything is on the relay.
    Sent,
    /// Stored durably in the outbox; it goes out with the next command that reaches the relay.
    Queued {
        /// Why it could not be sent now.
        reason: String,
    },
}

/// What one round of [`Client::sync_step`] did.
#[derive(Debug, Default)]
pub struct SyncStep {
    /// Events of the engine, in the order they happened.
    pub events: Vec<Event>,
    /// Group messages fed to the engine.
    pub messages: u64,
    /// Welcomes fed to the engine.
    pub welcomes: u64,
    /// Whether the relay has more right away (call again without waiting).
    pub more: bool,
}

/// What [`Client::sync_once`] did in total.
#[derive(Debug, Default)]
pub struct SyncReport {
    /// Events of the engine, in order.
    pub events: Vec<Event>,
    /// Group messages fed to the engine.
    pub messages: u64,
    /// Welcomes fed to the engine.
    pub welcomes: u64,
    /// Relay round trips.
    pub rounds: u64,
}

/// One DMLS identity with its state directory and relay.
pub struct Client {
    home: PathBuf,
    config: ClientConfig,
    relay: RelayClient,
    engine: Engine,
    key_packages: KeyPackagePolicy,
    sync_limit: u32,
    pending_events: Vec<Event>,
    barrier: Option<DurabilityBarrier>,
}

/// The default eviction threshold of [`Client`]: 30 days (PROTOCOL.md "Acknowledgement and
/// key deletion").
pub const DEFAULT_EVICTION_THRESHOLD: Duration =
    Duration::from_millis(crate::engine::DEFAULT_EVICTION_THRESHOLD_MS);

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("home", &self.home)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Milliseconds since the Unix epoch, from the system clock.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Lowercase hex of a DGroup id, as the CLI shows and accepts it.
pub fn dgroup_hex(id: &DGroupId) -> String {
    id.to_hex()
}

impl Client {
    /// Creates an identity in `home`: registers `name` on the relay at `relay_url`, stores the
    /// token in `config.json`, creates the MLS identity and uploads key packages and a
    /// last-resort key package. Bad input changes nothing.
    pub async fn init(home: &Path, relay_url: &str, name: &str) -> Result<Client, ClientError> {
        if !dmls_api::is_valid_client_id(name) {
            return Err(ClientError::InvalidInput(format!(
                "the name {name:?} is not allowed: use 1 to 64 characters of a-z 0-9 . _ -"
            )));
        }
        let config_path = home.join(CONFIG_FILE);
        if let Ok(existing) = read_config(&config_path) {
            return Err(ClientError::AlreadyInitialised {
                home: home.to_path_buf(),
                client_id: existing.client_id,
            });
        }
        let relay = RelayClient::new(relay_url)?;
        create_dir_private(home)?;
        // Open the database before registering so that a home we cannot write fails early.
        let (mut engine, barrier) = open_engine(home, Durability::default())?;
        let registered = match relay.register(name).await {
            Ok(r) => r,
            Err(e) if e.is_conflict() => return Err(ClientError::NameTaken(name.to_string())),
            Err(e) => return Err(e.into()),
        };
        let config = ClientConfig {
            relay_url: relay.base_url().to_string(),
            client_id: registered.client_id.clone(),
            token: registered.token.clone(),
        };
        // The token is shown only once: store it before anything else can fail.
        write_config(&config_path, &config)?;
        engine.create_identity(&config.client_id)?;
        let relay = relay.with_token(Token::new(config.token.clone()));
        let mut client = Self::assemble(home, config, relay, engine, barrier);
        client.upkeep_key_packages().await?;
        Ok(client)
    }

    /// Opens the identity in `home` (no network access).
    pub fn open(home: &Path) -> Result<Client, ClientError> {
        Self::open_with(home, Durability::default())
    }

    /// Opens the identity in `home` with the given [`Durability`] of its state database.
    pub fn open_with(home: &Path, durability: Durability) -> Result<Client, ClientError> {
        let config_path = home.join(CONFIG_FILE);
        if !config_path.exists() {
            return Err(ClientError::NoIdentity {
                home: home.to_path_buf(),
            });
        }
        let config = read_config(&config_path)?;
        let (mut engine, barrier) = open_engine(home, durability)?;
        // `init` stores the token before it creates the MLS identity: finish a crashed init.
        if engine.client_id()?.is_none() {
            engine.create_identity(&config.client_id)?;
        }
        let relay =
            RelayClient::new(&config.relay_url)?.with_token(Token::new(config.token.clone()));
        Ok(Self::assemble(home, config, relay, engine, barrier))
    }

    /// A client over opened parts, with the default key-package policy and sync limit.
    fn assemble(
        home: &Path,
        config: ClientConfig,
        relay: RelayClient,
        engine: Engine,
        barrier: Option<DurabilityBarrier>,
    ) -> Client {
        Client {
            home: home.to_path_buf(),
            config,
            relay,
            engine,
            key_packages: KeyPackagePolicy::default(),
            sync_limit: dmls_api::limits::SYNC_LIMIT_DEFAULT,
            pending_events: Vec::new(),
            barrier,
        }
    }

    /// Our client id.
    pub fn client_id(&self) -> &str {
        &self.config.client_id
    }

    /// The relay's base URL.
    pub fn relay_url(&self) -> &str {
        &self.config.relay_url
    }

    /// The home directory.
    pub fn home(&self) -> &Path {
        &self.home
    }

    /// The engine, for queries the facade does not wrap.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The engine, mutably (e.g. to set its update policy).
    pub fn engine_mut(&mut self) -> &mut Engine {
        &mut self.engine
    }

    /// The relay client.
    pub fn relay(&self) -> &RelayClient {
        &self.relay
    }

    /// Sets the key-package stock policy.
    pub fn set_key_package_policy(&mut self, policy: KeyPackagePolicy) {
        self.key_packages = policy;
    }

    /// Sets the most messages one sync round asks for (1 to 5,000).
    pub fn set_sync_limit(&mut self, limit: u32) {
        self.sync_limit = limit.clamp(1, dmls_api::limits::SYNC_LIMIT_MAX);
    }

    /// Sets the eviction threshold (default [`DEFAULT_EVICTION_THRESHOLD`], 30 days): a sync
    /// that caught up removes from our Send Groups the members that have not acknowledged an
    /// update for that long ([`Engine::evict_silent_members`], reported as
    /// [`Event::MemberEvicted`]), at most once a minute. `None` never evicts; zero is taken
    /// as one millisecond. The next sync that catches up checks with the new threshold.
    ///
    /// Whatever the threshold, such a sync also acknowledges what others updated when we have
    /// not done so for 7 days ([`Engine::acknowledge_overdue`]), so that a member who only
    /// reads is not evicted by the others. Both are duties of [`Engine::handle_timeout`], with
    /// the engine's [`crate::engine::DutyPolicy`].
    pub fn set_eviction_threshold(&mut self, threshold: Option<Duration>) {
        let policy = DutyPolicy {
            eviction_threshold_ms: threshold
                .map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
            ..self.engine.duty_policy()
        };
        self.engine.set_duty_policy(policy);
    }

    // ------------------------------------------------------------ outbox

    /// Carries out the engine's outbox, oldest first, until it is empty. Returns the events
    /// that answers (key-package claims) produced.
    ///
    /// A relay refusal that cannot change by retrying (4xx other than 401, 408 and 429) drops
    /// the item with a warning, so that one bad item cannot block the identity for ever;
    /// network errors and 5xx keep it for the next command.
    pub async fn flush_outbox(&mut self) -> Result<Vec<Event>, ClientError> {
        let mut events = Vec::new();
        let mut done = Vec::new();
        let result = self.perform_outbox(&mut events, &mut done).await;
        // Marked done even when a later item failed: they were performed.
        self.mark_done(&mut done)?;
        result.map(|()| events)
    }

    /// Items performed but not yet marked done are marked in batches of this many: each mark
    /// is a database commit (an fsync with [`Durability::Full`]). A crash before the mark
    /// posts them again with the same idempotency keys, which the relay stores once.
    const DONE_BATCH: usize = 64;

    /// [`Client::flush_outbox`]'s loop; performed items are collected in `done`.
    async fn perform_outbox(
        &mut self,
        events: &mut Vec<Event>,
        done: &mut Vec<u64>,
    ) -> Result<(), ClientError> {
        // Work through one snapshot of the outbox; read it again only after a claim answer
        // (which queues new items), so that a long outbox is read a few times, not once per item.
        let mut queue = std::collections::VecDeque::new();
        loop {
            if queue.is_empty() {
                // What was performed must not be read (and performed) again.
                self.mark_done(done)?;
                queue.extend(self.engine.outbox()?);
            }
            let Some(item) = queue.pop_front() else {
                return Ok(());
            };
            let id = item.id;
            if matches!(item.effect, Effect::ClaimKeyPackages { .. }) {
                queue.clear();
            }
            if !matches!(item.effect, Effect::ClaimKeyPackages { .. }) {
                // What we post must never be lost locally after it reached the relay.
                self.make_durable()?;
            }
            match item.effect {
                Effect::ClaimKeyPackages { client_ids, .. } => {
                    let (key_packages, missing) = match self
                        .relay
                        .claim_key_packages(&client_ids)
                        .await
                    {
                        Ok(r) => (
                            r.key_packages
                                .into_iter()
                                .map(|k| (k.client_id, k.key_package.into_inner()))
                                .collect(),
                            r.missing,
                        ),
                        // 404: some id is unknown to the relay, and nothing was claimed.
                        // Claim for each id alone, so that one member who has not
                        // registered yet does not hold back the others.
                        Err(e) if e.is_not_found() => {
                            tracing::warn!(error = %e, "key-package claim refused; claiming one by one");
                            let mut kps = Vec::new();
                            let mut missing = Vec::new();
                            for c in client_ids {
                                match self
                                    .relay
                                    .claim_key_packages(std::slice::from_ref(&c))
                                    .await
                                {
                                    Ok(r) => {
                                        kps.extend(
                                            r.key_packages
                                                .into_iter()
                                                .map(|k| (k.client_id, k.key_package.into_inner())),
                                        );
                                        missing.extend(r.missing);
                                    }
                                    Err(e) if e.is_not_found() => missing.push(c),
                                    Err(e) => return Err(e.into()),
                                }
                            }
                            (kps, missing)
                        }
                        Err(e) => return Err(e.into()),
                    };
                    let input = Input::ClaimedKeyPackages {
                        outbox_id: id,
                        key_packages,
                        missing,
                    };
                    self.mark_done(done)?;
                    events.extend(self.engine.handle(input, now_ms())?);
                }
                Effect::PutRelayGroup { group_id, members } => {
                    let r = self
                        .relay
                        .put_group(&self.config.client_id, &group_id, &members)
                        .await;
                    self.finish_item(id, r.map(|_| ()), events, done)?;
                }
                Effect::PostWelcomes(welcomes) => {
                    let r = self.relay.post_welcomes(welcomes).await;
                    self.finish_item(id, r.map(|_| ()), events, done)?;
                }
                Effect::PostMessage {
                    owner,
                    group_id,
                    data,
                } => {
                    let key = idempotency_key(id, &data);
                    let r = self
                        .relay
                        .post_message(&owner, &group_id, &data, Some(&key))
                        .await;
                    self.finish_item(id, r.map(|_| ()), events, done)?;
                }
            }
        }
    }

    /// The durability barrier of [`Durability::BeforeEffects`] (a no-op with
    /// [`Durability::Full`], where every transaction is already on disk).
    fn make_durable(&mut self) -> Result<(), ClientError> {
        if let Some(b) = &mut self.barrier {
            b.sync()?;
        }
        Ok(())
    }

    /// Queues outbox item `id` to be marked done after success or a permanent refusal;
    /// keeps it otherwise.
    fn finish_item(
        &mut self,
        id: u64,
        result: Result<(), RelayError>,
        events: &mut Vec<Event>,
        done: &mut Vec<u64>,
    ) -> Result<(), ClientError> {
        match result {
            Ok(()) => {}
            Err(e) if is_permanent(&e) => {
                tracing::warn!(outbox_id = id, error = %e, "relay refused an outbox item; dropping it");
                events.push(Event::Ignored {
                    reason: format!("relay refused outbox item {id}: {e}"),
                });
            }
            Err(e) => return Err(e.into()),
        }
        done.push(id);
        if done.len() >= Self::DONE_BATCH {
            self.mark_done(done)?;
        }
        Ok(())
    }

    /// Marks the performed outbox items in `done` done, in one transaction, and empties it.
    fn mark_done(&mut self, done: &mut Vec<u64>) -> Result<(), ClientError> {
        if done.is_empty() {
            return Ok(());
        }
        self.engine.outbox_done_many(done)?;
        done.clear();
        if let Some(b) = &mut self.barrier {
            b.skip_pending()?;
        }
        Ok(())
    }

    // ------------------------------------------------------------ key packages

    /// Keeps the key-package stock on the relay: tops up to the policy's target when below its
    /// low-water mark, and uploads a last-resort key package when the relay has none.
    /// Returns how many key packages were uploaded.
    pub async fn upkeep_key_packages(&mut self) -> Result<u64, ClientError> {
        let me = self.relay.me().await?;
        let mut fresh = Vec::new();
        if me.key_packages_available < self.key_packages.low_water {
            let n = self
                .key_packages
                .target
                .saturating_sub(me.key_packages_available);
            fresh = self.engine.generate_key_packages(n as usize)?;
        }
        let last_resort = if me.has_last_resort {
            None
        } else {
            Some(self.engine.generate_last_resort_key_package()?)
        };
        if fresh.is_empty() && last_resort.is_none() {
            return Ok(0);
        }
        let uploaded = fresh.len() as u64;
        self.relay.upload_key_packages(fresh, last_resort).await?;
        Ok(uploaded)
    }

    // ------------------------------------------------------------ sync

    /// One sync round trip: drains the outbox, asks the relay for everything new in every
    /// followed Send Group and the welcome inbox (holding the request up to `wait_ms` when
    /// nothing is new), feeds it all to the engine in relay order, tells the engine whether
    /// it caught up and does its due duties ([`Engine::handle_timeout`]: committing removals
    /// seen in this round, late-add retries, and once caught up overdue acknowledgements and
    /// eviction), then drains the outbox again.
    pub async fn sync_step(&mut self, wait_ms: u64) -> Result<SyncStep, ClientError> {
        let mut events = std::mem::take(&mut self.pending_events);
        events.extend(self.flush_outbox().await?);
        let mut step = SyncStep {
            events,
            ..SyncStep::default()
        };
        let followed = self.engine.followed_groups()?;
        let welcomes_after = self.engine.welcome_cursor()?;
        let mut cursors: Vec<SyncGroupCursor> = followed
            .into_iter()
            .map(|g| SyncGroupCursor {
                owner: g.owner,
                group_id: g.group_id,
                after: g.after_seq,
            })
            .collect();
        let mut first = true;
        // The relay takes at most 10,000 groups per request; the inbox is read with the first.
        loop {
            let rest = if cursors.len() > dmls_api::limits::MAX_SYNC_GROUPS {
                cursors.split_off(dmls_api::limits::MAX_SYNC_GROUPS)
            } else {
                Vec::new()
            };
            let request = SyncRequest {
                groups: std::mem::take(&mut cursors),
                welcomes_after: first.then_some(welcomes_after),
                limit: Some(self.sync_limit),
                wait_ms: (first && rest.is_empty() && wait_ms > 0)
                    .then_some(wait_ms.min(dmls_api::limits::WAIT_MS_MAX)),
            };
            first = false;
            let response = self.relay.sync(&request).await?;
            for f in &response.forbidden {
                tracing::debug!(owner = %f.owner, group_id = %f.group_id, "relay forbids reading this group");
            }
            // Welcomes first: Send Group messages may need the group they create. Everything
            // goes to the engine in one batch (one transaction); a bad input is skipped by
            // the engine (its cursor moves past it) and reported here.
            let mut inputs = Vec::new();
            let mut labels = Vec::new();
            let mut last_welcome = None;
            for w in response.welcomes {
                step.welcomes += 1;
                last_welcome = Some(w.id);
                labels.push(format!("welcome {}", w.id));
                inputs.push(Input::Welcome {
                    inbox_id: Some(w.id),
                    from: w.from,
                    data: w.data.into_inner(),
                });
                step.more = true; // new Send Groups to follow
            }
            for g in response.groups {
                step.more |= g.more;
                for m in g.messages {
                    step.messages += 1;
                    labels.push(format!("message {} of {}/{}", m.seq, g.owner, g.group_id));
                    inputs.push(Input::GroupMessage {
                        owner: g.owner.clone(),
                        group_id: g.group_id.clone(),
                        seq: Some(m.seq),
                        data: m.data.into_inner(),
                    });
                }
            }
            if !inputs.is_empty() {
                let results = self.engine.handle_batch(inputs, now_ms())?;
                for (label, result) in labels.into_iter().zip(results) {
                    match result {
                        Ok(events) => step.events.extend(events),
                        Err(e) => step.events.push(Event::Ignored {
                            reason: format!("{label} rejected: {e}"),
                        }),
                    }
                }
            }
            if step.messages + step.welcomes >= u64::from(self.sync_limit) {
                step.more = true;
            }
            if let Some(upto) = last_welcome {
                self.make_durable()?;
                // Processed (the engine stored the cursor with the state), so the relay may
                // drop them. Failing to is harmless: they are skipped by cursor next time.
                if let Err(e) = self.relay.delete_welcomes(upto).await {
                    tracing::debug!(error = %e, "could not delete processed welcomes");
                }
            }
            if rest.is_empty() {
                break;
            }
            cursors = rest;
        }
        // The clock-driven duties: pending removals after messages; overdue acknowledgements
        // and eviction only once caught up (the relay has nothing newer, so every commit there
        // counted); late-add retries.
        self.engine.set_caught_up(!step.more);
        step.events.extend(self.engine.handle_timeout(now_ms())?);
        step.events.extend(self.flush_outbox().await?);
        if step.welcomes > 0 {
            // Others claimed our key packages to make those welcomes.
            self.upkeep_key_packages().await?;
        }
        Ok(step)
    }

    /// Syncs until the relay has nothing more, without waiting. Also keeps the key-package
    /// stock.
    pub async fn sync_once(&mut self) -> Result<SyncReport, ClientError> {
        self.sync_once_with(|_| {}).await
    }

    /// Like [`Client::sync_once`], calling `progress` after every round trip (for progress bars).
    pub async fn sync_once_with(
        &mut self,
        mut progress: impl FnMut(&SyncReport),
    ) -> Result<SyncReport, ClientError> {
        let mut report = SyncReport::default();
        self.upkeep_key_packages().await?;
        loop {
            let step = self.sync_step(0).await?;
            report.rounds += 1;
            report.messages += step.messages;
            report.welcomes += step.welcomes;
            report.events.extend(step.events);
            progress(&report);
            if !step.more {
                return Ok(report);
            }
        }
    }

    /// Follows the relay with long polls of `wait_ms`, calling `on_event` for every event as it
    /// comes, until `on_event` breaks. Network failures are retried with a pause.
    pub async fn sync_follow(
        &mut self,
        wait_ms: u64,
        mut on_event: impl FnMut(&Event) -> ControlFlow<()>,
    ) -> Result<(), ClientError> {
        self.upkeep_key_packages().await?;
        loop {
            let step = match self.sync_step(wait_ms).await {
                Ok(s) => s,
                Err(ClientError::Relay(e @ RelayError::Network { .. })) => {
                    tracing::warn!(error = %e, "relay unreachable; trying again in 5 s");
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            for e in &step.events {
                if on_event(e).is_break() {
                    return Ok(());
                }
            }
        }
    }

    // ------------------------------------------------------------ commands

    /// Creates a DGroup named `name` with the `members` (client ids, ourselves excluded), and
    /// sends its Welcomes. Returns its id.
    pub async fn create_group(
        &mut self,
        name: &str,
        members: &[String],
    ) -> Result<DGroupId, ClientError> {
        let mut others: Vec<String> = Vec::new();
        for m in members {
            if !dmls_api::is_valid_client_id(m) {
                return Err(ClientError::InvalidInput(format!(
                    "{m:?} is not a valid client id"
                )));
            }
            if m == &self.config.client_id {
                continue;
            }
            if !others.contains(m) {
                others.push(m.clone());
            }
        }
        if others.is_empty() {
            return Err(ClientError::InvalidInput(
                "a group needs at least one member besides you".into(),
            ));
        }
        self.flush_before().await?;
        let id = self.engine.create_dgroup(name, &others, now_ms())?;
        self.try_flush_outbox().await?;
        Ok(id)
    }

    /// Sends a text message (`text/plain; charset=utf-8`) to the DGroup named or identified by
    /// `group`.
    pub async fn send_text(&mut self, group: &str, text: &str) -> Result<Delivery, ClientError> {
        self.send(group, crate::engine::TEXT_PLAIN, text.as_bytes())
            .await
    }

    /// Sends `body` of MIME type `content_type` to the DGroup `group` (name or id prefix).
    ///
    /// Once the engine has accepted the message it is stored in the outbox: when the relay
    /// cannot be reached it is [`Delivery::Queued`] and goes out with the next command.
    pub async fn send(
        &mut self,
        group: &str,
        content_type: &str,
        body: &[u8],
    ) -> Result<Delivery, ClientError> {
        let id = self.resolve_group(group)?;
        self.flush_before().await?;
        self.engine.send(&id, content_type, body, now_ms())?;
        self.try_flush_outbox().await
    }

    /// Makes a DMLS Update (a commit with a fresh leaf, importing what others did) in our Send
    /// Group of `group`.
    pub async fn update(&mut self, group: &str) -> Result<Delivery, ClientError> {
        let id = self.resolve_group(group)?;
        self.flush_before().await?;
        self.engine.update(&id, now_ms())?;
        self.try_flush_outbox().await
    }

    /// Removes `member` from the DGroup `group`: our commit removes it from our Send Group;
    /// the others follow when they see it.
    pub async fn remove(&mut self, group: &str, member: &str) -> Result<Delivery, ClientError> {
        let id = self.resolve_group(group)?;
        self.flush_before().await?;
        self.engine.remove(&id, member, now_ms())?;
        self.try_flush_outbox().await
    }

    /// Events produced outside a sync (answers to key-package claims made by a command, e.g.
    /// [`Event::KeyPackagesMissing`] after [`Client::create_group`]), taken once.
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.pending_events)
    }

    /// Drains the outbox before a command; an unreachable relay is not an error here (the
    /// command's own output is queued behind what is already waiting).
    async fn flush_before(&mut self) -> Result<(), ClientError> {
        self.try_flush_outbox().await.map(|_| ())
    }

    /// Drains the outbox like [`Client::flush_outbox`], but an unreachable or overloaded relay
    /// is not an error: the effects stay queued for the next command ([`Delivery::Queued`]).
    /// Events of claim answers are kept for [`Client::take_events`] or the next sync.
    pub async fn try_flush_outbox(&mut self) -> Result<Delivery, ClientError> {
        match self.flush_outbox().await {
            Ok(events) => {
                self.pending_events.extend(events);
                Ok(Delivery::Sent)
            }
            Err(ClientError::Relay(e)) if is_transient(&e) => {
                tracing::warn!(error = %e, "relay unavailable; kept in the outbox");
                Ok(Delivery::Queued {
                    reason: e.to_string(),
                })
            }
            Err(e) => Err(e),
        }
    }

    /// Our DGroups.
    pub fn groups(&self) -> Result<Vec<DGroupSummary>, ClientError> {
        Ok(self.engine.dgroups()?)
    }

    /// The last `limit` messages of `group`, ours included, oldest first.
    pub fn log(&self, group: &str, limit: usize) -> Result<Vec<ReceivedMessage>, ClientError> {
        let id = self.resolve_group(group)?;
        Ok(self.engine.history(&id, limit)?)
    }

    /// Status of `group`: members, every Send Group's epoch, waiting messages.
    pub fn status(&self, group: &str) -> Result<DGroupStatus, ClientError> {
        let id = self.resolve_group(group)?;
        Ok(self.engine.status(&id)?)
    }

    /// Finds a DGroup by exact name, else by id or unique id prefix (hex).
    pub fn resolve_group(&self, query: &str) -> Result<DGroupId, ClientError> {
        let groups = self.engine.dgroups()?;
        let by_name: Vec<&DGroupSummary> = groups.iter().filter(|g| g.name == query).collect();
        if by_name.len() == 1 {
            return Ok(by_name[0].id);
        }
        if by_name.len() > 1 {
            return Err(ClientError::AmbiguousGroup {
                query: query.to_string(),
                candidates: by_name.iter().map(|g| dgroup_hex(&g.id)).collect(),
            });
        }
        let q = query.to_ascii_lowercase();
        if q.is_empty() || !q.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ClientError::UnknownGroup(query.to_string()));
        }
        let by_id: Vec<&DGroupSummary> = groups
            .iter()
            .filter(|g| dgroup_hex(&g.id).starts_with(&q))
            .collect();
        match by_id.as_slice() {
            [] => Err(ClientError::UnknownGroup(query.to_string())),
            [one] => Ok(one.id),
            many => Err(ClientError::AmbiguousGroup {
                query: query.to_string(),
                candidates: many.iter().map(|g| dgroup_hex(&g.id)).collect(),
            }),
        }
    }
}

/// Idempotency key of outbox item `id` with body `data`: stable across restarts, so a post
/// retried after a crash is stored once; the body hash keeps keys of a re-created state
/// database from clashing with old ones.
fn idempotency_key(id: u64, data: &[u8]) -> String {
    let digest = Sha256::digest(data);
    format!("ob{id}-{}", hex::encode(&digest[..12]))
}

/// A failure that may pass by itself (relay down, overloaded, rate limiting).
fn is_transient(e: &RelayError) -> bool {
    match e {
        RelayError::Network { .. } => true,
        RelayError::Problem { status, .. } => *status >= 500 || matches!(status, 408 | 429),
        _ => false,
    }
}

/// A refusal that retrying cannot change.
fn is_permanent(e: &RelayError) -> bool {
    matches!(e.status(), Some(s) if (400..500).contains(&s) && !matches!(s, 401 | 408 | 429))
}

/// Opens `<home>/state.db` for the engine.
fn open_engine(
    home: &Path,
    durability: Durability,
) -> Result<(Engine, Option<DurabilityBarrier>), ClientError> {
    open_state_db_with(&home.join(STATE_FILE), durability)
}

/// How the engine's SQLite state reaches the disk.
///
/// Both modes keep the invariants crash safety rests on: every engine transaction is atomic
/// (a relay cursor moves only with the state it produced) and nothing leaves the device (a
/// post, a welcome deletion) before the state that produced it is on disk. They differ in
/// what a power loss or an operating-system crash (not a process crash, which loses nothing
/// in either mode) may undo.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Durability {
    /// `synchronous=FULL` (the default): every engine transaction is on disk before it
    /// returns. A sync answer is processed in one transaction, so this costs one fsync per
    /// sync round trip, not one per message. Nothing received and shown is ever shown again.
    #[default]
    #[value(name = "full")]
    Full,
    /// `synchronous=NORMAL` (WAL) plus a barrier: before anything is sent to the relay, or
    /// welcomes are deleted there, a checkpoint fsyncs everything committed so far. A power
    /// loss can undo the processing of messages received since the last barrier, together
    /// with their cursors, so they are fetched, processed and shown again. Slightly faster
    /// on slow disks.
    #[value(name = "relaxed")]
    BeforeEffects,
}

/// Makes committed engine transactions durable on demand (see [`Durability::BeforeEffects`]),
/// through a second connection to the same database file.
pub struct DurabilityBarrier {
    conn: rusqlite::Connection,
    path: PathBuf,
    last_version: Option<i64>,
}

impl std::fmt::Debug for DurabilityBarrier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DurabilityBarrier")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl DurabilityBarrier {
    /// Opens the barrier's own connection to `path`.
    pub fn open(path: &Path) -> Result<Self, ClientError> {
        let db_err = |source| ClientError::Database {
            path: path.to_path_buf(),
            source,
        };
        let conn = rusqlite::Connection::open(path).map_err(db_err)?;
        conn.busy_timeout(Duration::from_secs(10)).map_err(db_err)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(db_err)?;
        Ok(DurabilityBarrier {
            conn,
            path: path.to_path_buf(),
            last_version: None,
        })
    }

    /// Takes what was committed so far as needing no barrier: for commits whose loss is
    /// harmless (marking an outbox item done: it is posted again with the same idempotency
    /// key, and the relay stores it once).
    pub fn skip_pending(&mut self) -> Result<(), ClientError> {
        let version: i64 = self
            .conn
            .query_row("PRAGMA data_version", [], |r| r.get(0))
            .map_err(|source| ClientError::Database {
                path: self.path.clone(),
                source,
            })?;
        self.last_version = Some(version);
        Ok(())
    }

    /// If anything was committed since the last call, checkpoints the WAL (which fsyncs the
    /// WAL and the database file). Returns whether it had to.
    pub fn sync(&mut self) -> Result<bool, ClientError> {
        let db_err = |source| ClientError::Database {
            path: self.path.clone(),
            source,
        };
        // `data_version` changes when another connection (the engine's) has committed.
        let version: i64 = self
            .conn
            .query_row("PRAGMA data_version", [], |r| r.get(0))
            .map_err(db_err)?;
        if self.last_version == Some(version) {
            return Ok(false);
        }
        let (busy, _log, _done): (i64, i64, i64) = self
            .conn
            .query_row("PRAGMA wal_checkpoint(FULL)", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .map_err(db_err)?;
        if busy != 0 {
            // Another process holds the database; try again at the next barrier.
            return Err(ClientError::Database {
                path: self.path.clone(),
                source: rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
                    Some("the state database is busy; could not make it durable".into()),
                ),
            });
        }
        self.last_version = Some(version);
        Ok(true)
    }
}

/// Opens (or creates) an engine database file the way the facade does, with
/// [`Durability::Full`]: WAL journal, `synchronous=FULL`, 10 s busy timeout.
pub fn open_state_db(path: &Path) -> Result<Engine, ClientError> {
    open_state_db_with(path, Durability::Full).map(|(engine, _)| engine)
}

/// Opens (or creates) an engine database file with the given durability; with
/// [`Durability::BeforeEffects`] it also returns the barrier to call before sending anything.
pub fn open_state_db_with(
    path: &Path,
    durability: Durability,
) -> Result<(Engine, Option<DurabilityBarrier>), ClientError> {
    let db_err = |source| ClientError::Database {
        path: path.to_path_buf(),
        source,
    };
    let conn = rusqlite::Connection::open(path).map_err(db_err)?;
    conn.busy_timeout(Duration::from_secs(10)).map_err(db_err)?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(db_err)?;
    let sync = match durability {
        Durability::Full => "FULL",
        Durability::BeforeEffects => "NORMAL",
    };
    conn.pragma_update(None, "synchronous", sync)
        .map_err(db_err)?;
    let engine = Engine::open(conn)?;
    let barrier = match durability {
        Durability::Full => None,
        Durability::BeforeEffects => Some(DurabilityBarrier::open(path)?),
    };
    Ok((engine, barrier))
}

fn create_dir_private(dir: &Path) -> Result<(), ClientError> {
    let io = |source| ClientError::Io {
        path: dir.to_path_buf(),
        source,
    };
    if dir.exists() {
        // The user's own directory: leave its permissions alone.
        return Ok(());
    }
    std::fs::create_dir_all(dir).map_err(io)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
    }
    Ok(())
}

fn read_config(path: &Path) -> Result<ClientConfig, ClientError> {
    let text = std::fs::read(path).map_err(|source| ClientError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_slice(&text).map_err(|e| ClientError::BadConfig {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })
}

/// Writes `config.json` atomically (temporary file, fsync, rename) with mode 0600.
fn write_config(path: &Path, config: &ClientConfig) -> Result<(), ClientError> {
    use std::io::Write as _;
    let tmp = path.with_extension("json.tmp");
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| ClientError::Io { path: p, source }
    };
    let text = serde_json::to_vec_pretty(config).map_err(|e| ClientError::BadConfig {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(&tmp).map_err(io(&tmp))?;
    file.write_all(&text).map_err(io(&tmp))?;
    file.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn config_debug_hides_the_token() {
        let c = ClientConfig {
            relay_url: "http://127.0.0.1:1".into(),
            client_id: "alice".into(),
            token: "very-secret".into(),
        };
        assert!(!format!("{c:?}").contains("very-secret"));
    }

    #[test]
    fn config_file_is_private_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(CONFIG_FILE);
        let c = ClientConfig {
            relay_url: "http://127.0.0.1:1".into(),
            client_id: "alice".into(),
            token: "t".into(),
        };
        write_config(&path, &c).unwrap();
        let back = read_config(&path).unwrap();
        assert_eq!(back.client_id, "alice");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn the_durability_barrier_syncs_only_after_new_commits() {
        let dir = tempfile::tempdir().unwrap();
        let (mut engine, barrier) =
            open_state_db_with(&dir.path().join(STATE_FILE), Durability::BeforeEffects).unwrap();
        let mut barrier = barrier.unwrap();
        barrier.sync().unwrap();
        assert!(!barrier.sync().unwrap(), "nothing new was committed");
        engine.create_identity("alice").unwrap();
        assert!(barrier.sync().unwrap(), "the identity was committed");
        assert!(!barrier.sync().unwrap());
        engine.generate_key_packages(1).unwrap();
        barrier.skip_pending().unwrap();
        assert!(!barrier.sync().unwrap(), "skipped commits need no barrier");
        let (_, none) = open_state_db_with(&dir.path().join("other.db"), Durability::Full).unwrap();
        assert!(none.is_none());
    }

    #[test]
    fn idempotency_keys_are_valid_and_stable() {
        let k = idempotency_key(42, b"hello");
        assert!(dmls_api::is_valid_idempotency_key(&k));
        assert_eq!(k, idempotency_key(42, b"hello"));
        assert_ne!(k, idempotency_key(43, b"hello"));
    }

    #[test]
    fn opening_an_empty_home_says_to_run_init() {
        let dir = tempfile::tempdir().unwrap();
        let e = Client::open(dir.path()).unwrap_err();
        assert!(e.to_string().contains("dmls init"), "{e}");
    }

    #[tokio::test]
    async fn init_with_a_bad_name_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("h");
        let e = Client::init(&home, "http://127.0.0.1:9", "Not Valid")
            .await
            .unwrap_err();
        assert!(matches!(e, ClientError::InvalidInput(_)), "{e}");
        assert!(!home.exists());
    }
}
