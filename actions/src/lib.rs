#![doc = include_str!("../README.md")]
//! `ipp-actions`: captures finalized Kustom IPP sessions through the Order Management
//! API, exactly once.
//!
//! The consumer (`kafka/consumer.rs`) turns each finalized session into one row of the
//! `ipp_actions` ledger (`ledger/`) and only then stores the record's offset. The worker
//! pool (`worker.rs`) claims due rows and executes them with the OM client (`om.rs`),
//! with the retry policy of `retry.rs`; what fails for good goes to the dead-letter topic
//! (`kafka/dead_letters.rs`). The API is [`Config`], [`run`] and [`cli`].

mod api;
pub mod cli;
mod command;
pub mod config;
mod error;
mod http;
mod kafka;
mod ledger;
mod metrics;
mod om;
mod operator;
mod publisher;
mod retry;
mod service;
mod worker;

pub use config::{CapturePolicy, Config, OnFinalized};
pub use error::Error;
pub use service::{migrate, run};
