#![doc = include_str!("../README.md")]
//! The shared vocabulary of ipp-pipeline: Kustom webhook events as Rust types, the
//! minimal routing view the ingest service needs, and the Kafka record format that the
//! ingest service writes and every consumer reads.

pub mod command;
pub mod dlq;
pub mod event;
pub mod observation;
pub mod record;
pub mod route;
pub mod topics;
pub mod trace;

pub use command::{Command, CommandKind};
pub use dlq::{DlqService, FailedActionRecord};
pub use event::{Envelope, EventParseError, IppData, IppEvent, IppEventKind, KustomEvent};
pub use observation::{Observation, ObservationKind, OrderEvent};
pub use record::{RecordHeaders, RecordHeadersError};
pub use route::{Route, RouteError};
pub use trace::TraceContext;
