//! `ipp-projector status`: lag and checkpoint per partition, age of the newest applied
//! event, DLQ size.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use ipp_ops::{args::StatusArgs, output, status, Error};
use serde_json::json;

use super::dlq::{database, kafka};
use crate::config::Config;

/// `ipp-projector status`: the checkpoint is `ipp_projector_offsets` (where the projector
/// resumes), not the Kafka group's informational commits.
pub async fn run(config: &Config, args: &StatusArgs) -> Result<(), Error> {
    let kafka = kafka(config);
    let marks = status::watermarks(&kafka, &config.ipp_topic).await?;
    let pool = ipp_ops::connect(&database(config)).await?;
    // Against the wrong database (or schema) every record would look unapplied: a full
    // lag that pages someone for nothing. Say what is wrong instead.
    if !ipp_ops::table_exists(&pool, "ipp_projector_offsets").await? {
        return Err(Error::Usage(format!(
            "schema {} of this database has no projector read models (ipp_projector_offsets): \
             is DATABASE_URL the projector's database and PROJECTOR_SCHEMA its schema? A new \
             database is migrated by `ipp-projector migrate` or the projector's first start",
            config.schema
        )));
    }
    let mut checkpoints: BTreeMap<i32, Option<i64>> = BTreeMap::new();
    let mut last_commit: Option<DateTime<Utc>> = None;
    for row in sqlx::query!(
        "SELECT partition, next_offset, updated_at FROM ipp_projector_offsets \
         WHERE consumer_group = $1 AND topic = $2",
        config.group,
        config.ipp_topic,
    )
    .fetch_all(&pool)
    .await?
    {
        checkpoints.insert(row.partition, Some(row.next_offset));
        last_commit = last_commit.max(Some(row.updated_at));
    }
    let newest: Option<DateTime<Utc>> =
        sqlx::query_scalar!("SELECT max(received_at) FROM ipp_events")
            .fetch_one(&pool)
            .await?;
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
            // Always true (an unmigrated database is an error): kept for scripts.
            "migrated": true,
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
