//! Glue shared by the Nexus example binaries, benchmarks and integration tests.
//!
//! The library crates under `crates/` are what other VMMs embed; this package only holds
//! what the examples need on top: finding (and building, when run from a checkout) the
//! bundled example micro-guests.

#![deny(missing_docs)]

pub mod guests;
