#![doc = include_str!("../README.md")]
//! Helpers for the black-box tests: a broker to talk to, unique topics, fresh
//! databases, the services in-process (most tests) or as child processes (signals, exit
//! codes, CLI output), and an independent webhook signer.

pub mod actions;
pub mod cli;
pub mod commands;
pub mod db;
pub mod eventually;
pub mod faults;
pub mod ingest;
pub mod inprocess;
pub mod kafka;
pub mod om_sim;
pub mod orders;
pub mod otlp;
pub mod pipeline;
pub mod postgres;
pub mod process;
pub mod processes;
pub mod produce;
pub mod projector;
pub mod signer;
pub mod wiring;

/// A name no other test (or earlier run) uses: topics, groups, databases.
pub fn unique_name(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

pub use ipp_service::ReservedPort;

/// A webhook body from `schemas/fixtures/`.
pub fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/../schemas/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The JSON body of `response`.
pub async fn json_of(response: reqwest::Response) -> serde_json::Value {
    response.json().await.expect("json body")
}
