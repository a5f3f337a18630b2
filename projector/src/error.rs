use rdkafka::error::KafkaError;

/// Everything that can go wrong in the projector.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("database error")]
    Database(#[from] sqlx::Error),
    #[error("database migration failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("kafka error")]
    Kafka(#[from] KafkaError),
    #[error("dead-letter record for partition {partition} offset {offset} was not delivered")]
    DeadLetter {
        partition: i32,
        offset: i64,
        #[source]
        source: KafkaError,
    },
    #[error("http server failed")]
    Http(#[source] std::io::Error),
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("cannot write the output")]
    Output(#[source] std::io::Error),
    #[error("{0}")]
    Operation(String),
    /// A rebuild would swap in less history than the live tables hold.
    #[error("{0}")]
    TruncatedHistory(String),
}

impl ipp_ops::CommandFailure for Error {
    fn exit_code(&self) -> i32 {
        if matches!(self, Self::Config(_)) {
            2
        } else {
            1
        }
    }

    fn is_broken_pipe(&self) -> bool {
        matches!(self, Self::Output(e) if e.kind() == std::io::ErrorKind::BrokenPipe)
    }
}

impl Error {
    /// PostgreSQL rejected the data itself (a data exception, a constraint, a size
    /// limit such as an oversized index entry): retrying the same records cannot help,
    /// so the offending record is isolated and dead-lettered instead.
    pub fn is_rejected_data(&self) -> bool {
        let Self::Database(sqlx::Error::Database(e)) = self else {
            return false;
        };
        let code = e.code().unwrap_or_default();
        // 23505 (unique violation) can come from a race and is retried instead.
        (code.starts_with("22") || code.starts_with("23") || code.starts_with("54"))
            && code != "23505"
    }

    /// A unique constraint refused a row: another writer stored it first.
    pub fn is_unique_violation(&self) -> bool {
        matches!(self, Self::Database(sqlx::Error::Database(e)) if e.code().as_deref() == Some("23505"))
    }

    /// The message with every cause, for logs and dead-letter headers.
    pub fn chain(&self) -> String {
        ipp_service::error_chain(self)
    }

    /// Whether retrying the same batch later may succeed. A batch that hits a
    /// non-retryable error would fail forever, so the service stops instead.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Database(e) => !matches!(
                e,
                sqlx::Error::ColumnDecode { .. }
                    | sqlx::Error::ColumnNotFound(_)
                    | sqlx::Error::TypeNotFound { .. }
                    | sqlx::Error::Decode(_)
            ),
            Self::Kafka(_) | Self::DeadLetter { .. } => true,
            Self::Migrate(_)
            | Self::Http(_)
            | Self::Config(_)
            | Self::Output(_)
            | Self::Operation(_)
            | Self::TruncatedHistory(_) => false,
        }
    }
}
