//! The relay's integration tests, in one test binary (one build and link instead of one per
//! file): each module drives a relay in this process over real HTTP, on SQLite always and on
//! PostgreSQL when `DMLS_TEST_DATABASE_URL` is set (`common`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod common;

mod abuse;
mod bad_input;
mod clients;
mod concurrency;
mod groups;
mod key_packages;
mod kill;
mod limits;
mod messages;
mod migrations;
mod operations;
mod stream;
mod sync;
mod welcomes;
