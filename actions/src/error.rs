//! Errors of the actions service. Each knows whether trying again can help.

use std::time::Duration;

/// Everything that can go wrong in the service.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("order management: {0}")]
    Om(#[from] OmError),
    #[error("http server: {0}")]
    Io(#[from] std::io::Error),
    #[error("invalid configuration: {0}")]
    Config(String),
}

/// A failed Order Management call.
#[derive(Debug, thiserror::Error)]
pub enum OmError {
    /// Kustom answered with an error status.
    #[error("{endpoint} answered {status}{}: {message}", code_suffix(.error_code))]
    Status {
        endpoint: &'static str,
        status: u16,
        error_code: Option<String>,
        message: String,
        retry_after: Option<Duration>,
    },
    #[error("{endpoint} timed out: {source}")]
    Timeout {
        endpoint: &'static str,
        #[source]
        source: reqwest::Error,
    },
    #[error("{endpoint} could not connect: {source}")]
    Connect {
        endpoint: &'static str,
        #[source]
        source: reqwest::Error,
    },
    /// The connection broke or the response could not be read.
    #[error("{endpoint} transport error: {source}")]
    Transport {
        endpoint: &'static str,
        #[source]
        source: reqwest::Error,
    },
    /// A success answer whose body is not what the API documents.
    #[error("{endpoint} answered an unexpected body: {message}")]
    Body {
        endpoint: &'static str,
        message: String,
    },
    /// No API key for the action's account, so nothing was sent: the action waits for
    /// one (a fixed accounts file, or the order's finalized session naming its account).
    #[error("{}", no_api_key(.account))]
    NoApiKey { account: Option<String> },
}

fn no_api_key(account: &Option<String>) -> String {
    match account {
        Some(account) => format!(
            "no Order Management API key for account {account:?}: give it an `api_key` in \
             the accounts file, or set KUSTOM_API_KEY"
        ),
        None => "the order's account is not known (no finalized session of it recorded yet) \
                 and KUSTOM_API_KEY is not set"
            .to_owned(),
    }
}

fn code_suffix(code: &Option<String>) -> String {
    code.as_deref().map(|c| format!(" {c}")).unwrap_or_default()
}

impl OmError {
    /// 5xx, 429, timeouts, broken connections: trying again may help. Other 4xx need a
    /// person or a reconciliation.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Status { status, .. } => *status == 429 || *status >= 500,
            Self::Timeout { .. } | Self::Connect { .. } | Self::Transport { .. } => true,
            // A 2xx we cannot read: the same idempotency key replays the same answer,
            // so a retry is safe; the attempt limits stop it eventually.
            Self::Body { .. } => true,
            // Waits in the ledger instead (see `worker::permanent_or_retry`).
            Self::NoApiKey { .. } => false,
        }
    }

    /// The wait Kustom asked for (429 or 503 with `Retry-After`).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// Order Management's `error_code`, when it sent one.
    pub fn error_code(&self) -> Option<&str> {
        match self {
            Self::Status { error_code, .. } => error_code.as_deref(),
            _ => None,
        }
    }

    /// The HTTP status, when there was one.
    pub fn status_code(&self) -> Option<u16> {
        match self {
            Self::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// A short label for metrics: the status code or the kind of transport failure.
    pub fn label(&self) -> String {
        match self {
            Self::Status { status, .. } => status.to_string(),
            Self::Timeout { .. } => "timeout".into(),
            Self::Connect { .. } => "connect_error".into(),
            Self::Transport { .. } => "transport_error".into(),
            Self::Body { .. } => "bad_body".into(),
            Self::NoApiKey { .. } => "no_api_key".into(),
        }
    }

    /// What ends up in the ledger's `reason` for a permanent failure.
    pub fn reason(&self) -> String {
        match self {
            Self::Status {
                status,
                error_code: Some(code),
                ..
            } => format!("{code} ({status})"),
            Self::Status { status, .. } => format!("http {status}"),
            other => other.label(),
        }
    }
}
