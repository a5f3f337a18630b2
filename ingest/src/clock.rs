//! "Now", for the signature's timestamp tolerance. Production reads the system clock;
//! tests fix it, so that the tolerance's edges are checked without racing the clock.

/// The time ingest compares `webhook-timestamp` with.
#[derive(Debug, Clone, Copy, Default)]
pub struct Clock(Option<i64>);

impl Clock {
    /// The system clock: the only clock `ipp-ingest` itself uses.
    pub fn system() -> Self {
        Self(None)
    }

    /// A clock that always reads `unix_secs`.
    pub fn fixed(unix_secs: i64) -> Self {
        Self(Some(unix_secs))
    }

    /// Unix seconds.
    pub fn now(&self) -> i64 {
        self.0.unwrap_or_else(|| chrono::Utc::now().timestamp())
    }
}
