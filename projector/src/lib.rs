#![doc = include_str!("../README.md")]
//! ipp-projector: consumes `ipp.events` and keeps exact PostgreSQL read models
//! (`ipp_events`, `ipp_sessions`) whatever the order, duplicates or crashes.
//! See `kafka/mod.rs` for the offset strategy and `session.rs` for the status rule.
//!
//! The API is [`Config`] and [`run`] (the service), [`cli`] (the binary), and, on
//! purpose, [`engine`]: the apply engine the benchmark measures in-process, and
//! [`session`]: the status rule, the model the tests check the read models against, and
//! [`record`]: the record decoding, which the fuzz targets (fuzz/) drive.
//! Everything else is private.
//!
//! Modules depend one way: `session` ← `record` ← `store` ← `engine` ← `kafka`,
//! `commands` ← `service` ← `cli`; `orders` (the orders read model) beside `kafka`.

pub mod cli;
mod commands;
pub mod config;
mod dead_letters;
pub mod engine;
mod error;
mod http;
mod kafka;
mod metrics;
mod orders;
pub mod record;
mod schema;
mod service;
pub mod session;
mod store;

pub use config::Config;
pub use error::Error;
pub use service::{migrate, run};
