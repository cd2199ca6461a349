//! DMLS client.
pub mod cli;
pub mod client;
pub mod drive;
pub mod engine;
pub mod relay;
