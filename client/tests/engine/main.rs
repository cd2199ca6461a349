//! The engine's tests with no relay, in one test binary (one build and link instead of one per
//! file): `basic` (the protocol's paths), `hostile` (what a hostile relay or member sends) and
//! `simulation` (the seeded random-delivery simulation), on the network of `common`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

mod add;
mod basic;
mod hostile;
mod simulation;
