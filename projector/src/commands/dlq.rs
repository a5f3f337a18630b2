//! `ipp-projector dlq list|show|redrive`, on `ipp.events.dlq`, with ipp-ops' commands.

use ipp_ops::{
    dlq::DlqSource, kafka::KafkaSettings, redrive::NoLedger, Database, DlqCommand, Error,
};

use crate::config::Config;

pub(super) fn kafka(config: &Config) -> KafkaSettings {
    KafkaSettings {
        kafka: config.kafka.clone(),
        client_id: "ipp-projector-ops".to_owned(),
    }
}

/// The projector's tables are in `PROJECTOR_SCHEMA`; so are the ops tables it uses.
pub(super) fn database(config: &Config) -> Database {
    Database::in_schema(&config.database.url, &config.schema)
}

/// `ipp-projector dlq …`.
pub async fn run(config: &Config, command: &DlqCommand) -> Result<(), Error> {
    let source = DlqSource {
        kafka: kafka(config),
        topic: config.dlq_topic.clone(),
    };
    match command {
        DlqCommand::List(args) => ipp_ops::dlq::list(&source, &database(config), args).await,
        DlqCommand::Show(args) => ipp_ops::dlq::show(&source, args).await,
        // The projector parks only records, which are redriven to their topic.
        DlqCommand::Redrive(args) => {
            ipp_ops::redrive::run::<NoLedger>(&source, &database(config), args, None).await
        }
    }
}
