//! DMLS client.
pub mod cli;
pub mod client;
pub mod engine;
pub mod relay;
