//! `ipp-actions dlq list|show|redrive`, on `ipp.actions.dlq`, with ipp-ops' commands. A
//! failed action is redriven by re-queuing its ledger row ([`Requeue`]).

use ipp_ops::{dlq::DlqSource, kafka::KafkaSettings, Database, DlqCommand, Error};

use crate::{config::Config, ledger::requeue::Requeue};

pub(super) fn kafka(config: &Config) -> KafkaSettings {
    KafkaSettings {
        kafka: config.kafka.clone(),
        client_id: "ipp-actions-ops".to_owned(),
    }
}

/// `ipp-actions dlq …`.
pub async fn run(config: &Config, command: &DlqCommand) -> Result<(), Error> {
    let source = DlqSource {
        kafka: kafka(config),
        topic: config.dlq_topic.clone(),
    };
    match command {
        DlqCommand::List(args) => {
            ipp_ops::dlq::list(&source, &Database::new(&config.database.url), args).await
        }
        DlqCommand::Show(args) => ipp_ops::dlq::show(&source, args).await,
        DlqCommand::Redrive(args) => {
            ipp_ops::redrive::run(
                &source,
                &Database::new(&config.database.url),
                args,
                Some(&Requeue),
            )
            .await
        }
    }
}
