//! The operator commands of `ipp-projector`. They run once and exit: output on stdout
//! (text, or JSON with `--json`), logs on stderr.

pub mod dlq;
mod progress;
pub mod rebuild;
pub mod reconcile;
pub mod replay;
pub mod status;
