//! The DMLS relay: a dumb, durable store-and-forward HTTP service (`shared/API.md`).
//!
//! - [`config`]: the clap configuration.
//! - [`store`]: the `Store` trait with SQLite and PostgreSQL implementations.
//! - [`notify`]: wakes long polls when something is stored (in-process, and across processes
//!   through PostgreSQL LISTEN/NOTIFY).
//! - [`http`]: the axum router, one module per resource.
//! - [`server`]: start-up, background tasks and graceful shutdown.

pub mod config;
pub mod http;
pub mod notify;
pub mod server;
pub mod store;
#[doc(hidden)]
pub mod testing;

pub use config::Config;
pub use server::{RunningRelay, start};
