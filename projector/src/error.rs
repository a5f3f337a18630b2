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
}

impl Error {
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
            Self::Migrate(_) | Self::Http(_) | Self::Config(_) => false,
        }
    }
}
