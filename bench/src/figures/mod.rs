//! One module per group of figures; each returns its figures or the error that stopped it.

pub mod actions;
pub mod freshness;
pub mod ingest;
pub mod orders;
pub mod projector;
