//! Money commands: what a merchant asks for (capture, refund, cancel, release the
//! remaining authorization), issued through the HTTP API (`api.rs`) or the command line,
//! appended to the commands topic before it is acknowledged, and executed by the worker
//! through the ledger like the automatic capture.
//!
//! [`request`] checks what a client sent, [`issue()`] makes it a command in the log (once
//! per Idempotency-Key), [`state`] reads what became of it.

mod issue;
pub mod log;
pub mod request;
pub mod state;

pub use issue::{issue, IssueError};
pub use log::CommandLog;
pub use request::{CommandRequest, RequestError};
pub use state::CommandState;
