use rdkafka::error::KafkaError;

/// Everything the operator commands can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kafka error")]
    Kafka(#[from] KafkaError),
    #[error("database error")]
    Database(#[from] sqlx::Error),
    #[error("database migration failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("topic {0} does not exist")]
    NoSuchTopic(String),
    #[error("no record at {topic} {partition}:{offset}")]
    NoSuchRecord {
        topic: String,
        partition: i32,
        offset: i64,
    },
    #[error("timed out reading {topic}: {read} of {expected} records")]
    ReadTimeout {
        topic: String,
        read: usize,
        expected: i64,
    },
    #[error("{0}")]
    Usage(String),
    #[error("{0} record(s) could not be redriven (see the output)")]
    Incomplete(usize),
    #[error("writing the output failed")]
    Output(#[from] std::io::Error),
    #[error("a background task failed: {0}")]
    Task(String),
}

impl crate::CommandFailure for Error {
    fn exit_code(&self) -> i32 {
        if matches!(self, Self::Usage(_)) {
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
    /// The message with every cause, for the operator.
    pub fn chain(&self) -> String {
        ipp_service::error_chain(self)
    }
}
