//! DMLS client.
pub mod relay;
