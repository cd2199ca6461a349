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
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dmls_api::{StreamRequest, SyncGroupCursor, SyncRequest, SyncResponse};
use serde::{Deserialize, Serialize};

use crate::drive::{ClaimAnswer, OutboxEngine, OutboxError, Transport, perform_outbox};
use crate::engine::{
    AddPolicy, DGroupId, DGroupStatus, DGroupSummary, DutyPolicy, Engine, EngineError, Event,
    Input, OutboxItem, ReceivedMessage,
};
use crate::relay::{RelayClient, RelayError, StreamItem, Token};

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
            low_water: 32,
            target: 64,
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
    /// The engine cannot be reached: the async runtime is shutting down, or an earlier engine
    /// call panicked.
    #[error("the state database is not available: {0}")]
    EngineUnavailable(String),
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
///
/// The engine's SQLite work (fsync included) runs on tokio's blocking threads
/// ([`tokio::task::spawn_blocking`]), never on the async executor, so an application's other
/// tasks keep running while the engine works; relay requests run on the executor.
pub struct Client {
    home: PathBuf,
    config: ClientConfig,
    relay: RelayClient,
    engine: EngineHandle,
    key_packages: KeyPackagePolicy,
    sync_limit: u32,
    pending_events: Vec<Event>,
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
        // Open the database before registering so that a home we cannot write fails early.
        let dir = home.to_path_buf();
        let core = blocking(move || {
            create_dir_private(&dir)?;
            Core::open(&dir, Durability::default())
        })
        .await?;
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
        let written = config.clone();
        blocking(move || write_config(&config_path, &written)).await?;
        let relay = relay.with_token(Token::new(config.token.clone()));
        let mut client = Self::assemble(home, config, relay, core);
        let id = client.config.client_id.clone();
        client.with_engine(move |e| e.create_identity(&id)).await?;
        client.upkeep_key_packages().await?;
        Ok(client)
    }

    /// Opens the identity in `home` (no network access). It opens the state database on the
    /// calling thread; from async code that must not stall, call it in
    /// [`tokio::task::spawn_blocking`].
    pub fn open(home: &Path) -> Result<Client, ClientError> {
        Self::open_with(home, Durability::default())
    }

    /// Opens the identity in `home` with the given [`Durability`] of its state database (on
    /// the calling thread, as [`Client::open`]).
    pub fn open_with(home: &Path, durability: Durability) -> Result<Client, ClientError> {
        let config_path = home.join(CONFIG_FILE);
        if !config_path.exists() {
            return Err(ClientError::NoIdentity {
                home: home.to_path_buf(),
            });
        }
        let config = read_config(&config_path)?;
        let mut core = Core::open(home, durability)?;
        // `init` stores the token before it creates the MLS identity: finish a crashed init.
        if core.engine.client_id()?.is_none() {
            core.engine.create_identity(&config.client_id)?;
        }
        let relay =
            RelayClient::new(&config.relay_url)?.with_token(Token::new(config.token.clone()));
        Ok(Self::assemble(home, config, relay, core))
    }

    /// A client over opened parts, with the default key-package policy and sync limit.
    fn assemble(home: &Path, config: ClientConfig, relay: RelayClient, core: Core) -> Client {
        Client {
            home: home.to_path_buf(),
            config,
            relay,
            engine: EngineHandle(Arc::new(Mutex::new(core))),
            key_packages: KeyPackagePolicy::default(),
            sync_limit: dmls_api::limits::SYNC_LIMIT_DEFAULT,
            pending_events: Vec::new(),
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

    /// Runs `f` with the engine on a blocking thread, off the async executor, for queries and
    /// commands the facade does not wrap (e.g. setting the engine's update policy). Calls are
    /// serialised: `f` waits for any engine work of this client still running.
    pub async fn with_engine<T, E, F>(&self, f: F) -> Result<T, ClientError>
    where
        F: FnOnce(&mut Engine) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        ClientError: From<E>,
    {
        self.engine
            .run(move |core| f(&mut core.engine).map_err(ClientError::from))
            .await
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
    /// the engine's [`DutyPolicy`].
    pub async fn set_eviction_threshold(
        &mut self,
        threshold: Option<Duration>,
    ) -> Result<(), ClientError> {
        let threshold_ms = threshold.map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX));
        self.with_engine(move |e| {
            let policy = DutyPolicy {
                eviction_threshold_ms: threshold_ms,
                ..e.duty_policy()
            };
            e.set_duty_policy(policy);
            Ok::<_, ClientError>(())
        })
        .await
    }

    // ------------------------------------------------------------ outbox

    /// Carries out the engine's outbox, oldest first, until it is empty
    /// ([`crate::drive::perform_outbox`]). Returns the events that answers (key-package
    /// claims) produced.
    ///
    /// A relay refusal that cannot change by retrying (4xx other than 401, 408 and 429) drops
    /// the item with a warning, so that one bad item cannot block the identity for ever;
    /// network errors and 5xx keep it for the next command.
    pub async fn flush_outbox(&mut self) -> Result<Vec<Event>, ClientError> {
        let mut transport = RelayTransport {
            relay: &self.relay,
            me: &self.config.client_id,
        };
        perform_outbox(&mut self.engine, &mut transport)
            .await
            .map_err(|e| match e {
                OutboxError::Engine(e) => e,
                OutboxError::Transport(e) => e.into(),
            })
    }

    // ------------------------------------------------------------ key packages

    /// Keeps the key-package stock on the relay: tops up to the policy's target (at most the
    /// relay's stock limit) when below its low-water mark, and uploads a last-resort key
    /// package when the relay has none or ours served a Welcome ([`Engine::needs_last_resort`]).
    /// Returns how many (non-last-resort) key packages were uploaded.
    pub async fn upkeep_key_packages(&mut self) -> Result<u64, ClientError> {
        let me = self.relay.me().await?;
        let target = match me.max_key_packages {
            0 => self.key_packages.target,
            max => self.key_packages.target.min(max),
        };
        let fresh = if me.key_packages_available < self.key_packages.low_water.min(target) {
            target.saturating_sub(me.key_packages_available)
        } else {
            0
        };
        let last_resort =
            !me.has_last_resort || self.with_engine(|e| e.needs_last_resort(now_ms())).await?;
        if fresh == 0 && !last_resort {
            return Ok(0);
        }
        let (fresh, last_resort) = self
            .with_engine(move |e| {
                let fresh = e.generate_key_packages(fresh as usize)?;
                let last_resort = if last_resort {
                    Some(e.generate_last_resort_key_package()?)
                } else {
                    None
                };
                Ok::<_, EngineError>((fresh, last_resort))
            })
            .await?;
        let uploaded = fresh.len() as u64;
        self.relay
            .upload_key_packages(fresh, last_resort.clone())
            .await?;
        if let Some(kp) = last_resort {
            // Only once the relay holds it is it the current one.
            self.with_engine(move |e| e.last_resort_uploaded(&kp, now_ms()))
                .await?;
        }
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
        let limit = self.sync_limit;
        let requests = self
            .with_engine(move |e| sync_requests(e, limit, wait_ms))
            .await?;
        for request in requests {
            let response = self.relay.sync(&request).await?;
            self.feed(response, &mut step).await?;
        }
        if step.messages + step.welcomes >= u64::from(self.sync_limit) {
            step.more = true;
        }
        let caught_up = !step.more;
        self.after_feed(&mut step, caught_up).await?;
        Ok(step)
    }

    /// What follows feeding the engine: the clock-driven duties (pending removals after
    /// messages; overdue acknowledgements and eviction only once `caught_up`, that is the relay
    /// has nothing newer, so every commit there counted; late-add retries), the outbox, and the
    /// key-package stock after welcomes (others claimed our key packages to make them).
    async fn after_feed(
        &mut self,
        step: &mut SyncStep,
        caught_up: bool,
    ) -> Result<(), ClientError> {
        let due = self
            .with_engine(move |e| {
                e.set_caught_up(caught_up);
                e.handle_timeout(now_ms())
            })
            .await?;
        step.events.extend(due);
        step.events.extend(self.flush_outbox().await?);
        if step.welcomes > 0 {
            self.upkeep_key_packages().await?;
        }
        Ok(())
    }

    /// Feeds one sync answer to the engine in one batch (one transaction), welcomes first
    /// (Send Group messages may need the group they create), and then lets the relay drop the
    /// welcomes processed. A bad input is skipped by the engine (its cursor moves past it) and
    /// reported as [`Event::Ignored`].
    async fn feed(
        &mut self,
        response: SyncResponse,
        step: &mut SyncStep,
    ) -> Result<(), ClientError> {
        for f in &response.forbidden {
            tracing::debug!(owner = %f.owner, group_id = %f.group_id, "relay forbids reading this group");
        }
        let last_welcome = response.welcomes.last().map(|w| w.id);
        let (inputs, labels) = inputs_of(response, step);
        if inputs.is_empty() {
            return Ok(());
        }
        let results = self
            .engine
            .run(move |core| {
                let results = core.engine.handle_batch(inputs, now_ms())?;
                if last_welcome.is_some() {
                    // Nothing leaves the device before the state that produced it is on disk.
                    core.make_durable()?;
                }
                Ok(results)
            })
            .await?;
        for (label, result) in labels.into_iter().zip(results) {
            match result {
                Ok(events) => step.events.extend(events),
                Err(e) => step.events.push(Event::Ignored {
                    reason: format!("{label}: {e}"),
                }),
            }
        }
        if let Some(upto) = last_welcome {
            // Processed (the engine stored the cursor with the state), so the relay may drop
            // them. Failing to is harmless: they are skipped by cursor next time.
            if let Err(e) = self.relay.delete_welcomes(upto).await {
                tracing::debug!(error = %e, "could not delete processed welcomes");
            }
        }
        Ok(())
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

    /// Follows the relay until `on_event` breaks, calling it for every event as it comes: over
    /// the relay's push stream (`POST /v1/stream`), or with long polls of `wait_ms` where the
    /// relay has none (or the client follows more groups than one stream carries). Before each
    /// stream opens, plain syncs catch up; a stream that ends or breaks is opened again from
    /// the cursors of the last event processed, so nothing is missed or processed twice.
    /// Network failures are retried with a pause.
    pub async fn sync_follow(
        &mut self,
        wait_ms: u64,
        mut on_event: impl FnMut(&Event) -> ControlFlow<()>,
    ) -> Result<(), ClientError> {
        self.upkeep_key_packages().await?;
        let mut streams = true;
        loop {
            let followed = if streams {
                let opened = Instant::now();
                let result = self.follow_stream(&mut on_event).await;
                if matches!(result, Ok(Follow::Reopen)) && opened.elapsed() < STREAM_MIN_LIFE {
                    // A stream that ends at once (say, replaced by another follower of this
                    // client) is not reopened in a busy loop.
                    tokio::time::sleep(STREAM_MIN_LIFE).await;
                }
                result
            } else {
                self.follow_long_poll(wait_ms, &mut on_event).await
            };
            match followed {
                Ok(Follow::Stop) => return Ok(()),
                Ok(Follow::Reopen) => {}
                Ok(Follow::NoStreams) => {
                    tracing::info!(
                        "the relay has no push stream for us: following with long polls"
                    );
                    streams = false;
                }
                Err(ClientError::Relay(e @ RelayError::Network { .. })) => {
                    tracing::warn!(error = %e, "relay unreachable; trying again in 5 s");
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// One long poll of [`Client::sync_follow`].
    async fn follow_long_poll(
        &mut self,
        wait_ms: u64,
        on_event: &mut impl FnMut(&Event) -> ControlFlow<()>,
    ) -> Result<Follow, ClientError> {
        let step = self.sync_step(wait_ms).await?;
        Ok(emit(&step.events, on_event))
    }

    /// Catches up with plain syncs, then follows one push stream until it ends, breaks, or
    /// the set of groups to follow changes (after a welcome, say).
    async fn follow_stream(
        &mut self,
        on_event: &mut impl FnMut(&Event) -> ControlFlow<()>,
    ) -> Result<Follow, ClientError> {
        loop {
            let step = self.sync_step(0).await?;
            if let Follow::Stop = emit(&step.events, on_event) {
                return Ok(Follow::Stop);
            }
            if !step.more {
                break;
            }
        }
        let limit = self.sync_limit;
        let Some(request) = self.with_engine(move |e| stream_request(e, limit)).await? else {
            return Ok(Follow::NoStreams);
        };
        let mut stream = match self.relay.open_stream(&request).await {
            Ok(stream) => stream,
            Err(e) if matches!(e.status(), Some(404 | 405)) => return Ok(Follow::NoStreams),
            Err(e) => return Err(e.into()),
        };
        let mut ready = false;
        loop {
            // Wake for the engine's next duty (a late-add retry, say) as a long poll would.
            let due_in = self
                .with_engine(|e| Ok::<_, EngineError>(e.poll_timeout()))
                .await?
                .map(|due| Duration::from_millis(due.saturating_sub(now_ms()).max(1)));
            let next = match due_in {
                // Elapsed: the duty is due (`None`).
                Some(wait) => tokio::time::timeout(wait, stream.next()).await.ok(),
                None => Some(stream.next().await),
            };
            let mut step = SyncStep::default();
            let mut reopen = false;
            match next {
                None => {}
                Some(Ok(Some(StreamItem::Sync(response)))) => {
                    self.feed(response, &mut step).await?;
                    // Messages past the event's limit follow at once; a welcome makes new
                    // Send Groups to follow, and a removal closes some.
                    let streamed = group_names(&request.groups);
                    reopen = self
                        .with_engine(move |e| {
                            let now = e.followed_groups()?;
                            Ok::<_, EngineError>(
                                now.len() != streamed.len()
                                    || now
                                        .into_iter()
                                        .any(|g| !streamed.contains(&(g.owner, g.group_id))),
                            )
                        })
                        .await?;
                    if reopen {
                        return self.finish_stream_step(step, ready, on_event).await;
                    }
                }
                Some(Ok(Some(StreamItem::Ready))) => ready = true,
                Some(Ok(Some(StreamItem::End(end)))) => {
                    tracing::debug!(reason = %end.reason, "the relay ended the push stream");
                    reopen = true;
                }
                Some(Ok(None)) => reopen = true,
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "the push stream broke; opening another");
                    reopen = true;
                }
            }
            if let Follow::Stop = self.finish_stream_step(step, ready, on_event).await? {
                return Ok(Follow::Stop);
            }
            if reopen {
                return Ok(Follow::Reopen);
            }
        }
    }

    /// Duties, outbox and events after one stream event (or a duty's time).
    async fn finish_stream_step(
        &mut self,
        mut step: SyncStep,
        ready: bool,
        on_event: &mut impl FnMut(&Event) -> ControlFlow<()>,
    ) -> Result<Follow, ClientError> {
        let mut events = std::mem::take(&mut self.pending_events);
        let caught_up = ready && !step.more;
        self.after_feed(&mut step, caught_up).await?;
        events.append(&mut step.events);
        Ok(match emit(&events, on_event) {
            Follow::Stop => Follow::Stop,
            _ => Follow::Reopen,
        })
    }

    // ------------------------------------------------------------ commands

    /// Creates a DGroup named `name` with the `members` (client ids, ourselves excluded), and
    /// sends its Welcomes. Returns its id.
    pub async fn create_group(
        &mut self,
        name: &str,
        members: &[String],
    ) -> Result<DGroupId, ClientError> {
        self.create_group_with_policy(name, members, AddPolicy::AnyMember)
            .await
    }

    /// [`Client::create_group`] with the group's [`AddPolicy`]: whether any member may add
    /// members later, or only its admin (the creator, us).
    pub async fn create_group_with_policy(
        &mut self,
        name: &str,
        members: &[String],
        add_policy: AddPolicy,
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
        let name = name.to_string();
        let id = self
            .with_engine(move |e| e.create_dgroup_with_policy(&name, &others, add_policy, now_ms()))
            .await?;
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
        let (content_type, body) = (content_type.to_string(), body.to_vec());
        self.command(group, move |e, id| {
            e.send(id, &content_type, &body, now_ms()).map(|_| ())
        })
        .await
    }

    /// Makes a DMLS Update (a commit with a fresh leaf, importing what others did) in our Send
    /// Group of `group`.
    pub async fn update(&mut self, group: &str) -> Result<Delivery, ClientError> {
        self.command(group, |e, id| e.update(id, now_ms())).await
    }

    /// Removes `member` from the DGroup `group`: our commit removes it from our Send Group;
    /// the others follow when they see it.
    pub async fn remove(&mut self, group: &str, member: &str) -> Result<Delivery, ClientError> {
        let member = member.to_string();
        self.command(group, move |e, id| e.remove(id, &member, now_ms()))
            .await
    }

    /// Renames the DGroup `group` to `name` for every member ([`Engine::rename`]).
    pub async fn rename(&mut self, group: &str, name: &str) -> Result<Delivery, ClientError> {
        let name = name.to_string();
        self.command(group, move |e, id| e.rename(id, &name, now_ms()))
            .await
    }

    /// Adds `members` (client ids) to the DGroup `group` ([`Engine::add`]): the announcement
    /// and the key-package claim go to the relay (or stay queued, see [`Delivery`]); every
    /// other member adds them when it syncs. They read what is sent after they joined.
    pub async fn add(&mut self, group: &str, members: &[String]) -> Result<Delivery, ClientError> {
        for m in members {
            if !dmls_api::is_valid_client_id(m) {
                return Err(ClientError::InvalidInput(format!(
                    "{m:?} is not a valid client id"
                )));
            }
        }
        let members = members.to_vec();
        self.command(group, move |e, id| e.add(id, &members, now_ms()))
            .await
    }

    /// Leaves the DGroup `group` ([`Engine::leave`]): the announcement goes to the relay (or
    /// stays queued, see [`Delivery`]) and the group's keys are deleted here. Returns whether
    /// the others were told.
    pub async fn leave(&mut self, group: &str) -> Result<(bool, Delivery), ClientError> {
        let id = self.resolve_group(group).await?;
        self.flush_before().await?;
        let announced = self.with_engine(move |e| e.leave(&id, now_ms())).await?;
        Ok((announced, self.try_flush_outbox().await?))
    }

    /// Runs a command of the engine on the DGroup `group` between two drains of the outbox.
    async fn command<F>(&mut self, group: &str, f: F) -> Result<Delivery, ClientError>
    where
        F: FnOnce(&mut Engine, &DGroupId) -> Result<(), EngineError> + Send + 'static,
    {
        let id = self.resolve_group(group).await?;
        self.flush_before().await?;
        self.with_engine(move |e| f(e, &id)).await?;
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
    pub async fn groups(&self) -> Result<Vec<DGroupSummary>, ClientError> {
        self.with_engine(|e| e.dgroups()).await
    }

    /// The last `limit` messages of `group`, ours included, oldest first.
    pub async fn log(
        &self,
        group: &str,
        limit: usize,
    ) -> Result<Vec<ReceivedMessage>, ClientError> {
        let id = self.resolve_group(group).await?;
        self.with_engine(move |e| e.history(&id, limit)).await
    }

    /// Status of `group`: members, every Send Group's epoch, waiting messages.
    pub async fn status(&self, group: &str) -> Result<DGroupStatus, ClientError> {
        let id = self.resolve_group(group).await?;
        self.with_engine(move |e| e.status(&id)).await
    }

    /// The dependency graph of `group`: every Send Group's recent commits, what each
    /// imported, waiting messages (read-only; see [`crate::graph`] for drawing it).
    pub async fn graph(&self, group: &str) -> Result<crate::engine::DGroupGraph, ClientError> {
        let id = self.resolve_group(group).await?;
        self.with_engine(move |e| e.graph(&id)).await
    }

    /// Our identity key (see [`crate::engine::fingerprint`]).
    pub async fn identity_key(&self) -> Result<Vec<u8>, ClientError> {
        self.with_engine(|e| e.identity_key()).await
    }

    /// The identity keys `member`'s leaves carry in the Send Groups we hold.
    pub async fn identity_keys_of(
        &self,
        member: &str,
    ) -> Result<Vec<crate::engine::SeenKey>, ClientError> {
        let member = member.to_owned();
        self.with_engine(move |e| e.identity_keys_of(&member)).await
    }

    /// Every contact and its pinned identity key (docs/PROTOCOL.md "Pinning").
    pub async fn contacts(&self) -> Result<Vec<crate::engine::Contact>, ClientError> {
        self.with_engine(|e| e.contacts()).await
    }

    /// Makes `member` a contact before any group with it: claims one of its key packages from
    /// the relay (using it up) and pins its key ([`Engine::add_contact`]). Returns the key; a
    /// key change is kept for [`Client::take_events`].
    pub async fn add_contact(&mut self, member: &str) -> Result<Vec<u8>, ClientError> {
        if !dmls_api::is_valid_client_id(member) {
            return Err(ClientError::InvalidInput(format!(
                "{member:?} is not a valid client id"
            )));
        }
        let claimed = self.relay.claim_key_packages(&[member.to_string()]).await?;
        let kp = claimed
            .key_packages
            .into_iter()
            .find(|k| k.client_id == member)
            .ok_or_else(|| {
                ClientError::InvalidInput(format!(
                    "the relay has no key package for {member}: is the name right, and has \
                     {member} run `dmls init`?"
                ))
            })?;
        let member = member.to_owned();
        let (key, event) = self
            .with_engine(move |e| e.add_contact(&member, &kp.key_package.0, now_ms()))
            .await?;
        self.pending_events.extend(event);
        Ok(key)
    }

    /// Key changes not resolved yet: keys seen for contacts that are not their pinned keys.
    pub async fn key_changes(&self) -> Result<Vec<crate::engine::KeyChange>, ClientError> {
        self.with_engine(|e| e.key_changes()).await
    }

    /// Accepts the new key of `member` whose fingerprint is `fingerprint` (checked out of
    /// band): joins the Welcomes held for it and claims key packages again where `member` is
    /// missing, then sends what that queued. Events are kept for [`Client::take_events`].
    pub async fn trust(&mut self, member: &str, fingerprint: &str) -> Result<(), ClientError> {
        let (member, fingerprint) = (member.to_owned(), fingerprint.to_owned());
        let events = self
            .with_engine(move |e| e.trust(&member, &fingerprint, now_ms()))
            .await?;
        self.pending_events.extend(events);
        self.try_flush_outbox().await.map(|_| ())
    }

    /// Records the safety number with `member` as compared: its pinned key is verified.
    /// Returns that key.
    pub async fn confirm_verified(&self, member: &str) -> Result<Vec<u8>, ClientError> {
        let member = member.to_owned();
        self.with_engine(move |e| e.confirm_verified(&member, now_ms()))
            .await
    }

    /// Whether only verified contacts may be added to groups (kept in the state database).
    pub async fn require_verified(&self) -> Result<bool, ClientError> {
        self.with_engine(|e| e.require_verified()).await
    }

    /// See [`Client::require_verified`].
    pub async fn set_require_verified(&self, on: bool) -> Result<(), ClientError> {
        self.with_engine(move |e| e.set_require_verified(on)).await
    }

    /// Finds a DGroup by exact name, else by id or unique id prefix (hex).
    pub async fn resolve_group(&self, query: &str) -> Result<DGroupId, ClientError> {
        pick_group(&self.groups().await?, query)
    }
}

/// The DGroup of `groups` named `query`, else the one whose id (hex) starts with it.
fn pick_group(groups: &[DGroupSummary], query: &str) -> Result<DGroupId, ClientError> {
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

/// The sync requests for everything new in every Send Group `engine` follows and its welcome
/// inbox: the relay takes at most 10,000 groups per request; the inbox is read with the
/// first, and only a single request waits up to `wait_ms`.
fn sync_requests(
    engine: &Engine,
    limit: u32,
    wait_ms: u64,
) -> Result<Vec<SyncRequest>, EngineError> {
    let welcomes_after = engine.welcome_cursor()?;
    // A long poll ends by the time the engine's next duty is due (a late-add retry, say).
    let wait_ms = match engine.poll_timeout() {
        Some(due) if wait_ms > 0 => wait_ms.min(due.saturating_sub(now_ms()).max(1)),
        _ => wait_ms,
    };
    let cursors = followed_cursors(engine)?;
    let mut chunks: Vec<Vec<SyncGroupCursor>> = cursors
        .chunks(dmls_api::limits::MAX_SYNC_GROUPS)
        .map(<[SyncGroupCursor]>::to_vec)
        .collect();
    if chunks.is_empty() {
        chunks.push(Vec::new());
    }
    let single = chunks.len() == 1;
    Ok(chunks
        .into_iter()
        .enumerate()
        .map(|(i, groups)| SyncRequest {
            groups,
            welcomes_after: (i == 0).then_some(welcomes_after),
            limit: Some(limit),
            wait_ms: (single && wait_ms > 0).then_some(wait_ms.min(dmls_api::limits::WAIT_MS_MAX)),
        })
        .collect())
}

/// How [`Client::sync_follow`] goes on after one stream or long poll.
enum Follow {
    /// `on_event` broke.
    Stop,
    /// Go on: open the next stream (or make the next long poll).
    Reopen,
    /// The relay has no push stream (or one cannot carry every group): use long polls.
    NoStreams,
}

/// A push stream ended this soon is not reopened before this much time has passed.
const STREAM_MIN_LIFE: Duration = Duration::from_secs(1);

/// Calls `on_event` for each event until it breaks.
fn emit(events: &[Event], on_event: &mut impl FnMut(&Event) -> ControlFlow<()>) -> Follow {
    for e in events {
        if on_event(e).is_break() {
            return Follow::Stop;
        }
    }
    Follow::Reopen
}

/// The push stream request for every Send Group `engine` follows and its welcome inbox, or
/// `None` when they are more than one stream carries.
fn stream_request(engine: &Engine, limit: u32) -> Result<Option<StreamRequest>, EngineError> {
    let groups = followed_cursors(engine)?;
    if groups.len() > dmls_api::limits::MAX_SYNC_GROUPS {
        return Ok(None);
    }
    Ok(Some(StreamRequest {
        groups,
        welcomes_after: Some(engine.welcome_cursor()?),
        limit: Some(limit),
    }))
}

/// A cursor for every Send Group `engine` follows, where it has read up to.
fn followed_cursors(engine: &Engine) -> Result<Vec<SyncGroupCursor>, EngineError> {
    Ok(engine
        .followed_groups()?
        .into_iter()
        .map(|g| SyncGroupCursor {
            owner: g.owner,
            group_id: g.group_id,
            after: g.after_seq,
        })
        .collect())
}

/// The (owner, group id) of each cursor.
fn group_names(cursors: &[SyncGroupCursor]) -> std::collections::HashSet<(String, String)> {
    cursors
        .iter()
        .map(|c| (c.owner.clone(), c.group_id.clone()))
        .collect()
}

/// The engine inputs of one sync answer, welcomes first, each with a label for reports;
/// counts them in `step` and notes there whether the relay has more.
fn inputs_of(response: SyncResponse, step: &mut SyncStep) -> (Vec<Input>, Vec<String>) {
    let mut inputs = Vec::new();
    let mut labels = Vec::new();
    for w in response.welcomes {
        step.welcomes += 1;
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
    (inputs, labels)
}

/// The engine and its durability barrier: what [`Client`] runs on blocking threads.
struct Core {
    engine: Engine,
    barrier: Option<DurabilityBarrier>,
}

impl Core {
    /// Opens `<home>/state.db`.
    fn open(home: &Path, durability: Durability) -> Result<Core, ClientError> {
        let (engine, barrier) = open_state_db_with(&home.join(STATE_FILE), durability)?;
        Ok(Core { engine, barrier })
    }

    /// The durability barrier of [`Durability::BeforeEffects`] (a no-op with
    /// [`Durability::Full`], where every transaction is already on disk).
    fn make_durable(&mut self) -> Result<(), ClientError> {
        if let Some(b) = &mut self.barrier {
            b.sync()?;
        }
        Ok(())
    }

    /// The engine side of the outbox driver, on this thread, at the system clock.
    fn local(&mut self) -> LocalEngine<'_> {
        LocalEngine {
            engine: &mut self.engine,
            barrier: self.barrier.as_mut(),
            now_ms: now_ms(),
        }
    }
}

/// [`Client`]'s engine, shared with the blocking threads that run it.
struct EngineHandle(Arc<Mutex<Core>>);

impl EngineHandle {
    /// Runs `f` on the engine on a blocking thread ([`tokio::task::spawn_blocking`]): SQLite
    /// work, fsync included, must not stall the async executor.
    async fn run<T, F>(&self, f: F) -> Result<T, ClientError>
    where
        F: FnOnce(&mut Core) -> Result<T, ClientError> + Send + 'static,
        T: Send + 'static,
    {
        let core = Arc::clone(&self.0);
        blocking(move || {
            // A poisoned lock: an earlier call panicked in the middle of engine work.
            let mut core = core.lock().map_err(|_| {
                ClientError::EngineUnavailable("an earlier engine call panicked".into())
            })?;
            f(&mut core)
        })
        .await
    }
}

impl OutboxEngine for EngineHandle {
    type Error = ClientError;

    fn outbox(
        &mut self,
        performed: Vec<u64>,
    ) -> impl Future<Output = Result<Vec<OutboxItem>, ClientError>> + Send {
        self.run(move |core| core.local().snapshot(&performed))
    }

    fn outbox_done(
        &mut self,
        performed: Vec<u64>,
    ) -> impl Future<Output = Result<(), ClientError>> + Send {
        self.run(move |core| core.local().mark_done(&performed))
    }

    fn handle_claim(
        &mut self,
        performed: Vec<u64>,
        answer: Input,
    ) -> impl Future<Output = Result<Vec<Event>, ClientError>> + Send {
        self.run(move |core| core.local().claim(&performed, answer))
    }
}

/// Runs blocking work `f` on tokio's blocking threads. A panic in `f` is resumed here.
async fn blocking<T, F>(f: F) -> Result<T, ClientError>
where
    F: FnOnce() -> Result<T, ClientError> + Send + 'static,
    T: Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(ClientError::EngineUnavailable(e.to_string())),
    }
}

/// An engine with its durability barrier, driven in place on the caller's thread at the
/// clock `now_ms`: the engine side of [`perform_outbox`] for [`Client`] and for synchronous
/// shells (a test network, a benchmark).
pub struct LocalEngine<'a> {
    /// The engine.
    pub engine: &'a mut Engine,
    /// Its barrier with [`Durability::BeforeEffects`]: synced before anything is posted.
    pub barrier: Option<&'a mut DurabilityBarrier>,
    /// The clock for claim answers.
    pub now_ms: u64,
}

impl std::fmt::Debug for LocalEngine<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalEngine")
            .field("now_ms", &self.now_ms)
            .finish_non_exhaustive()
    }
}

impl LocalEngine<'_> {
    /// Marks the performed outbox items done, in one transaction. Losing that mark is
    /// harmless (they are posted again with the same idempotency keys), so it needs no
    /// durability barrier.
    pub fn mark_done(&mut self, performed: &[u64]) -> Result<(), ClientError> {
        if performed.is_empty() {
            return Ok(());
        }
        self.engine.outbox_done_many(performed)?;
        if let Some(b) = &mut self.barrier {
            b.skip_pending()?;
        }
        Ok(())
    }

    /// [`OutboxEngine::outbox`], on this thread.
    pub fn snapshot(&mut self, performed: &[u64]) -> Result<Vec<OutboxItem>, ClientError> {
        self.mark_done(performed)?;
        let items = self.engine.outbox()?;
        // What we post must never be lost locally after it reached the relay.
        let posts = items
            .iter()
            .any(|i| !matches!(i.effect, crate::engine::Effect::ClaimKeyPackages { .. }));
        if let (true, Some(b)) = (posts, &mut self.barrier) {
            b.sync()?;
        }
        Ok(items)
    }

    /// [`OutboxEngine::handle_claim`], on this thread.
    pub fn claim(&mut self, performed: &[u64], answer: Input) -> Result<Vec<Event>, ClientError> {
        self.mark_done(performed)?;
        Ok(self.engine.handle(answer, self.now_ms)?)
    }
}

impl OutboxEngine for LocalEngine<'_> {
    type Error = ClientError;

    fn outbox(
        &mut self,
        performed: Vec<u64>,
    ) -> impl Future<Output = Result<Vec<OutboxItem>, ClientError>> + Send {
        std::future::ready(self.snapshot(&performed))
    }

    fn outbox_done(
        &mut self,
        performed: Vec<u64>,
    ) -> impl Future<Output = Result<(), ClientError>> + Send {
        std::future::ready(self.mark_done(&performed))
    }

    fn handle_claim(
        &mut self,
        performed: Vec<u64>,
        answer: Input,
    ) -> impl Future<Output = Result<Vec<Event>, ClientError>> + Send {
        std::future::ready(self.claim(&performed, answer))
    }
}

/// The relay as the transport of [`perform_outbox`].
struct RelayTransport<'a> {
    relay: &'a RelayClient,
    /// Our client id: the owner of the relay groups we put.
    me: &'a str,
}

impl RelayTransport<'_> {
    /// Claims for each id alone, so that one member who has not registered yet does not
    /// hold back the others (after the relay refused a claim for all with 404: some id is
    /// unknown to it, and nothing was claimed).
    async fn claim_one_by_one(&self, client_ids: Vec<String>) -> Result<ClaimAnswer, RelayError> {
        let mut answer = ClaimAnswer::default();
        for c in client_ids {
            match self
                .relay
                .claim_key_packages(std::slice::from_ref(&c))
                .await
            {
                Ok(r) => {
                    answer.key_packages.extend(
                        r.key_packages
                            .into_iter()
                            .map(|k| (k.client_id, k.key_package.into_inner())),
                    );
                    answer.missing.extend(r.missing);
                }
                Err(e) if e.is_not_found() => answer.missing.push(c),
                Err(e) => return Err(e),
            }
        }
        Ok(answer)
    }
}

impl Transport for RelayTransport<'_> {
    type Error = RelayError;

    async fn claim_key_packages(
        &mut self,
        client_ids: Vec<String>,
    ) -> Result<ClaimAnswer, RelayError> {
        match self.relay.claim_key_packages(&client_ids).await {
            Ok(r) => Ok(ClaimAnswer {
                key_packages: r
                    .key_packages
                    .into_iter()
                    .map(|k| (k.client_id, k.key_package.into_inner()))
                    .collect(),
                missing: r.missing,
            }),
            Err(e) if e.is_not_found() => {
                tracing::warn!(error = %e, "key-package claim refused; claiming one by one");
                self.claim_one_by_one(client_ids).await
            }
            Err(e) => Err(e),
        }
    }

    async fn put_relay_group(
        &mut self,
        group_id: String,
        members: Vec<String>,
    ) -> Result<(), RelayError> {
        self.relay
            .put_group(self.me, &group_id, &members)
            .await
            .map(|_| ())
    }

    async fn post_welcomes(&mut self, welcomes: Vec<(String, Vec<u8>)>) -> Result<(), RelayError> {
        self.relay.post_welcomes(welcomes).await.map(|_| ())
    }

    async fn post_message(
        &mut self,
        owner: String,
        group_id: String,
        data: Vec<u8>,
        idempotency_key: String,
    ) -> Result<(), RelayError> {
        self.relay
            .post_message(&owner, &group_id, &data, Some(&idempotency_key))
            .await
            .map(|_| ())
    }

    fn is_permanent(&self, error: &RelayError) -> bool {
        is_permanent(error)
    }
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
