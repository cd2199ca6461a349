//! DMLS client.
pub mod chat;
pub mod cli;
pub mod client;
pub mod drive;
pub mod engine;
pub mod graph;
pub mod relay;
