#![doc = include_str!("../README.md")]
//! Realistic webhook traffic: a seeded mix of IPP sessions (most finalized, some
//! cancelled, some with failed payment attempts, a few abandoned), duplicates,
//! out-of-order deliveries and other Kustom events, each delivery signed like Kustom
//! signs it. The generator also knows what every session must end up as, so tests can
//! compare the read model and the captures with it.

pub mod commands;
pub mod send;
pub mod workload;

pub use send::{send_all, SendReport, WebhookSigner};
pub use workload::{Delivery, ExpectedSession, Workload, WorkloadSpec};
