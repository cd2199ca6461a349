//! Start-up, the HTTP/1 accept loop, background tasks and graceful shutdown.
//!
//! One watch channel carries the shutdown signal to three places: the accept loop's graceful
//! shutdown (stop accepting, let in-flight requests finish), every waiting long poll (answer at
//! once instead of holding the connection for up to 30 s, which would stall the graceful
//! shutdown), and the background tasks. Only when all of them are done is the database closed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::Config;
use crate::http::{self, Ctx, now_millis};
use crate::notify::Notifier;
use crate::store::{self, Millis, Store};

/// Idempotency keys are kept at least this long (API.md).
const IDEMPOTENCY_RETENTION: Duration = Duration::from_secs(24 * 3600);

/// How often idle rate-limiter entries are forgotten.
const RATE_LIMIT_HOUSEKEEPING: Duration = Duration::from_secs(60);

/// A relay serving in this process (used by `main` and by tests).
///
/// Dropping it without [`shutdown`](Self::shutdown) also stops the server gracefully (the
/// shutdown signal's sender goes away), but does not wait for it nor close the database.
pub struct RunningRelay {
    /// The address it listens on (the real port when bound to port 0).
    pub addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    server: JoinHandle<std::io::Result<()>>,
    background: Vec<JoinHandle<()>>,
    store: Arc<dyn Store>,
}

impl RunningRelay {
    /// `http://ADDR`, for clients.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting, finishes in-flight requests, wakes long polls, closes the database.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        // `send_replace` stores the value even when no receiver is left.
        self.shutdown.send_replace(true);
        let served = self.server.await;
        for task in self.background {
            // They stop on the same signal; a task that panicked has nothing left to clean up.
            let _ = task.await;
        }
        self.store.close().await;
        tracing::info!("relay stopped");
        match served {
            Ok(result) => result.context("the HTTP server failed"),
            Err(e) => Err(anyhow::anyhow!("the HTTP server task failed: {e}")),
        }
    }
}

/// Opens the database (running migrations), binds, and serves in a background task.
pub async fn start(config: Config) -> anyhow::Result<RunningRelay> {
    start_with_clock(config, None).await
}

/// [`start`], with handlers reading the time from `clock` instead of the system clock (tests).
pub(crate) async fn start_with_clock(
    config: Config,
    clock: Option<http::Clock>,
) -> anyhow::Result<RunningRelay> {
    config
        .validate()
        .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
    let notifier = Notifier::new();
    let store = store::open(&config, notifier.clone())
        .await
        .context("cannot open the database")?;
    let (listener, addr) = match bind(config.bind).await {
        Ok(bound) => bound,
        Err(e) => {
            store.close().await;
            return Err(e);
        }
    };

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let prune_interval = Duration::from_secs(config.prune_interval_secs);
    let max_connections = config.max_connections;
    let retention = config.retention();
    let ctx = Arc::new(Ctx::new(
        config,
        Arc::clone(&store),
        notifier,
        shutdown_rx.clone(),
        clock,
    ));
    let app = http::router(Arc::clone(&ctx));

    let server = tokio::spawn(serve(listener, app, max_connections, shutdown_rx.clone()));

    let mut background = Vec::new();
    if prune_interval.is_zero() {
        tracing::warn!(
            "pruning is off (--prune-interval-secs 0): old messages and welcomes are kept"
        );
    } else {
        background.push(tokio::spawn(prune_loop(
            Arc::clone(&store),
            retention,
            prune_interval,
            shutdown_rx.clone(),
        )));
    }
    background.push(tokio::spawn(rate_limit_housekeeping(
        Arc::clone(&ctx),
        shutdown_rx,
    )));

    tracing::info!(%addr, backend = store.backend(), "relay listening");
    Ok(RunningRelay {
        addr,
        shutdown: shutdown_tx,
        server,
        background,
        store,
    })
}

/// Serves HTTP/1.1 on `listener` until `shutdown` (or its sender is dropped), then stops
/// accepting and waits for open connections to finish their requests.
///
/// What `axum::serve` does, with one difference: each connection's read buffer is capped at
/// hyper's smallest, 8 KiB ([`READ_BUFFER_BYTES`]). With hyper's default an idle keep-alive
/// connection (every waiting long poll) grows its buffer to 16 KiB as soon as it reads on
/// while a request is in flight; capped, hyper moves the unread bytes to the front and keeps
/// the one 8 KiB buffer. Request bodies are read in chunks of at most that size, and request
/// heads (request line and headers) larger than it are refused (431).
///
/// With `max_connections` connections open (0: no cap), a new one is answered 503 with
/// Retry-After and closed ([`refuse_connection`]).
async fn serve(
    listener: TcpListener,
    app: axum::Router,
    max_connections: usize,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.max_buf_size(READ_BUFFER_BYTES);
    // Dropped (closed) when every connection task has ended.
    let (open_tx, open_rx) = watch::channel(());
    loop {
        let (stream, peer) = tokio::select! {
            () = stopped(&mut shutdown) => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors or memory, or a connection that failed before it
                    // was accepted: keep serving the connections there are, retry shortly.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
        };
        // Every connection task holds a receiver, besides `open_rx` itself.
        if max_connections > 0 && open_tx.receiver_count() > max_connections {
            http::metrics::refused(http::metrics::LIMIT_CONNECTIONS, 1);
            tokio::spawn(refuse_connection(stream));
            continue;
        }
        let service = tower::ServiceExt::map_request(
            app.clone(),
            move |mut request: axum::http::Request<hyper::body::Incoming>| {
                request
                    .extensions_mut()
                    .insert(axum::extract::ConnectInfo(peer));
                request.map(axum::body::Body::new)
            },
        );
        let connection = builder.serve_connection(
            hyper_util::rt::TokioIo::new(stream),
            hyper_util::service::TowerToHyperService::new(service),
        );
        let mut shutdown = shutdown.clone();
        let open = open_rx.clone();
        tokio::spawn(async move {
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                }
                () = stopped(&mut shutdown) => {
                    // Finish the request in flight (long polls answer at once on shutdown),
                    // then close.
                    connection.as_mut().graceful_shutdown();
                    if let Err(e) = connection.await {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                }
            }
            drop(open);
        });
    }
    drop(listener);
    drop(open_rx);
    open_tx.closed().await;
    Ok(())
}

/// Answers a connection beyond `--max-connections` with a 503 problem+json and closes it. It
/// waits for the request head first (an HTTP client takes an answer before its request as a
/// protocol error) but reads at most [`READ_BUFFER_BYTES`] of it, and the whole exchange is
/// bounded in time, so refused clients cannot pile up here.
async fn refuse_connection(mut stream: tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let body = serde_json::json!({
        "type": "about:blank",
        "title": "Service Unavailable",
        "status": 503,
        "detail": "the relay has as many open connections as it may; try again later",
    })
    .to_string();
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/problem+json\r\n\
         retry-after: {CONNECTIONS_RETRY_AFTER_SECS}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let answer = async {
        let mut head = Vec::with_capacity(1024);
        let mut chunk = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < READ_BUFFER_BYTES {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&chunk[..n]);
        }
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await?;
        // Read what the client sent until it closes: closing with unread data would send a
        // reset, which can make the client lose the answer.
        while stream.read(&mut chunk).await? > 0 {}
        Ok::<(), std::io::Error>(())
    };
    // A client that does not read its answer in time just loses the connection.
    let _ = tokio::time::timeout(REFUSAL_WRITE_TIMEOUT, answer).await;
}

/// Retry-After of the 503 beyond `--max-connections`.
const CONNECTIONS_RETRY_AFTER_SECS: u64 = 5;

/// How long a refused connection may take to take its 503.
const REFUSAL_WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// hyper's smallest read buffer per connection (see [`serve`]).
const READ_BUFFER_BYTES: usize = 8 * 1024;

/// Pause after a failed accept (say, out of file descriptors) before accepting again.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// The listener and its real address (the port the OS chose for port 0).
async fn bind(addr: SocketAddr) -> anyhow::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} (is another process using it?)"))?;
    let bound = listener
        .local_addr()
        .with_context(|| format!("cannot read the address bound for {addr}"))?;
    Ok((listener, bound))
}

/// Waits until the shutdown signal is set (or its sender is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// Deletes messages and welcomes older than the retention, and idempotency keys older than a
/// day, now and then every `interval`.
async fn prune_loop(
    store: Arc<dyn Store>,
    retention: Duration,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stopped(&mut shutdown) => return,
            _ = ticks.tick() => {}
        }
        let now = now_millis();
        let before = now.saturating_sub(millis(retention));
        let idempotency_before = now.saturating_sub(millis(IDEMPOTENCY_RETENTION));
        match store.prune(before, idempotency_before).await {
            Ok(stats) => tracing::info!(
                messages = stats.messages,
                welcomes = stats.welcomes,
                welcome_bodies = stats.welcome_bodies,
                idempotency_keys = stats.idempotency_keys,
                usage_days = stats.usage_days,
                "pruned"
            ),
            Err(e) => tracing::warn!(error = %e, "pruning failed; will retry next interval"),
        }
    }
}

fn millis(d: Duration) -> Millis {
    Millis::try_from(d.as_millis()).unwrap_or(Millis::MAX)
}

async fn rate_limit_housekeeping(ctx: Arc<Ctx>, mut shutdown: watch::Receiver<bool>) {
    let mut ticks = tokio::time::interval(RATE_LIMIT_HOUSEKEEPING);
    loop {
        tokio::select! {
            () = stopped(&mut shutdown) => return,
            _ = ticks.tick() => ctx.rate_limits.forget_idle(),
        }
    }
}
