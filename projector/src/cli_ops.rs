//! The operator subcommands of `ipp-projector`: `dlq list|show|redrive` (on
//! `ipp.events.dlq`) and `status`. They run once and exit; output goes to stdout (a
//! table, or JSON with `--json`), logs to stderr. The shared machinery lives in the
//! `ipp-ops` crate.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use ipp_ops::{
    args::StatusArgs, dlq::DlqSource, kafka::KafkaSettings, output, status, Database, DlqCommand,
    Error,
};
use serde_json::json;
use sqlx::Row;

use crate::config::Config;

fn kafka(config: &Config) -> KafkaSettings {
    KafkaSettings {
        kafka: config.kafka.clone(),
        client_id: "ipp-projector-ops".to_owned(),
    }
}

/// The projector's tables are in `PROJECTOR_SCHEMA`; so are the ops tables it uses.
fn database(config: &Config) -> Database {
    Database::in_schema(&config.database.url, &config.schema)
}

/// `ipp-projector dlq …`.
pub async fn dlq(config: &Config, command: &DlqCommand) -> Result<(), Error> {
    let source = DlqSource {
        kafka: kafka(config),
        topic: config.dlq_topic.clone(),
    };
    match command {
        DlqCommand::List(args) => ipp_ops::dlq::list(&source, &database(config), args).await,
        DlqCommand::Show(args) => ipp_ops::dlq::show(&source, args).await,
        DlqCommand::Redrive(args) => ipp_ops::redrive::run(&source, &database(config), args).await,
    }
}

/// `ipp-projector status`: the checkpoint is `ipp_projector_offsets` (where the projector
/// resumes), not the Kafka group's informational commits.
pub async fn status(config: &Config, args: &StatusArgs) -> Result<(), Error> {
    let kafka = kafka(config);
    let marks = status::watermarks(&kafka, &config.ipp_topic).await?;
    let pool = ipp_ops::connect(&database(config)).await?;
    let migrated = ipp_ops::table_exists(&pool, "ipp_projector_offsets").await?;
    let mut checkpoints: BTreeMap<i32, Option<i64>> = BTreeMap::new();
    let mut last_commit: Option<DateTime<Utc>> = None;
    let mut newest: Option<DateTime<Utc>> = None;
    if migrated {
        for row in sqlx::query(
            "SELECT partition, next_offset, updated_at FROM ipp_projector_offsets \
             WHERE consumer_group = $1 AND topic = $2",
        )
        .bind(&config.group)
        .bind(&config.ipp_topic)
        .fetch_all(&pool)
        .await?
        {
            checkpoints.insert(row.try_get("partition")?, Some(row.try_get("next_offset")?));
            let at: DateTime<Utc> = row.try_get("updated_at")?;
            last_commit = last_commit.max(Some(at));
        }
        newest = sqlx::query_scalar("SELECT max(received_at) FROM ipp_events")
            .fetch_one(&pool)
            .await?;
    }
    let partitions = status::partitions(&marks, &checkpoints);
    let dlq = status::dlq(&kafka, &config.dlq_topic, Some(&pool)).await?;
    pool.close().await;
    let age =
        |t: Option<DateTime<Utc>>| t.map(|t| (Utc::now() - t).num_milliseconds() as f64 / 1000.0);

    if args.json {
        return output::json_lines([json!({
            "service": "ipp-projector",
            "topic": config.ipp_topic,
            "group": config.group,
            "checkpoint_source": "ipp_projector_offsets",
            "migrated": migrated,
            "partitions": partitions,
            "total_lag": status::total_lag(&partitions),
            "newest_event_received_at": newest,
            "newest_event_age_seconds": age(newest),
            "last_commit_at": last_commit,
            "dlq": dlq,
        })]);
    }
    let mut text = format!(
        "ipp-projector  topic {}  group {}  (checkpoint: ipp_projector_offsets)\n",
        config.ipp_topic, config.group
    );
    text.push_str(&status::partitions_table(&partitions));
    text.push_str(&format!(
        "total lag       {}\n",
        status::total_lag(&partitions)
    ));
    text.push_str(&status::age_line("newest event", age(newest)));
    text.push_str(" (now minus received_at of the newest applied event)\n");
    text.push_str(&status::age_line("last commit", age(last_commit)));
    text.push('\n');
    text.push_str(&status::dlq_line(&dlq));
    output::line(&text)
}
