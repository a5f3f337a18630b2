//! The operator commands of `ipp-actions`. They run once and exit: output on stdout
//! (text, or JSON with `--json`), logs on stderr.

pub mod command;
pub mod dlq;
pub mod retry;
pub mod status;
