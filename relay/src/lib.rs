//! The DMLS relay: a dumb, durable store-and-forward HTTP service (`docs/API.md`).
//!
//! Embedders use [`Config`] and [`start`], which returns a [`RunningRelay`]. The modules:
//! - `config`: the clap configuration; `forwarded`: the trusted reverse proxies it names;
//!   `cors`: the origins browsers may call from.
//! - `store`: the `Store` trait with SQLite and PostgreSQL implementations.
//! - `notify`: wakes long polls when something is stored (in-process, and across processes
//!   through PostgreSQL LISTEN/NOTIFY).
//! - `waiters`: the per-client and per-process caps on requests that wait (long polls).
//! - `http`: the axum router, one module per resource.
//! - `server`: start-up, the HTTP/1 accept loop, background tasks and graceful shutdown.
//! - [`testing`] (cargo feature `testing`): helpers of the relay's and the client's tests.

mod config;
mod cors;
mod forwarded;
mod http;
mod notify;
mod server;
mod store;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
mod waiters;

pub use config::{Config, LogFormat, RegistrationMode};
pub use cors::CorsOrigins;
pub use forwarded::TrustedProxies;
pub use server::{RunningRelay, start};
