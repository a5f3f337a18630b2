//! `ipp-actions status`: lag and committed offsets per partition, pending and failed
//! actions, reads of orders (apart: they are not money), unpublished observations, DLQ
//! size.

use chrono::{DateTime, Utc};
use ipp_ops::{args::StatusArgs, output, status, Database, Error};
use serde_json::json;

use super::dlq::kafka;
use crate::config::Config;

/// `ipp-actions status`.
pub async fn run(config: &Config, args: &StatusArgs) -> Result<(), Error> {
    let kafka = kafka(config);
    let marks = status::watermarks(&kafka, &config.ipp_topic).await?;
    let committed = status::committed(
        &kafka,
        &config.group,
        &config.ipp_topic,
        marks.iter().map(|m| m.partition).collect(),
    )
    .await?;
    let partitions = status::partitions(&marks, &committed);
    let pool = ipp_ops::connect(&Database::new(&config.database.url)).await?;
    // Against the wrong database every action would look absent; say so instead.
    if !ipp_ops::table_exists(&pool, "ipp_actions").await? {
        return Err(Error::Usage(
            "this database has no ipp_actions ledger: is DATABASE_URL ipp-actions' database? \
             A new database is migrated by `ipp-actions migrate` or the service's first start"
                .into(),
        ));
    }
    let mut counts = serde_json::Map::new();
    let mut reads = serde_json::Map::new();
    for state in ["pending", "succeeded", "skipped", "failed"] {
        counts.insert(state.into(), json!(0));
        reads.insert(state.into(), json!(0));
    }
    for row in sqlx::query!(
        r#"SELECT status, kind = 'observe' AS "read!", count(*) AS "n!"
             FROM ipp_actions GROUP BY 1, 2"#
    )
    .fetch_all(&pool)
    .await?
    {
        let map = if row.read { &mut reads } else { &mut counts };
        map.insert(row.status, json!(row.n));
    }
    let unpublished = sqlx::query_scalar!(
        r#"SELECT count(*) AS "n!" FROM ipp_actions
             WHERE published_at IS NULL AND status <> 'pending'"#
    )
    .fetch_one(&pool)
    .await?;
    let oldest_pending: Option<f64> = sqlx::query_scalar!(
        "SELECT extract(epoch FROM now() - min(created_at))::float8 \
             FROM ipp_actions WHERE status = 'pending' AND kind <> 'observe'",
    )
    .fetch_one(&pool)
    .await?;
    let newest_action: Option<DateTime<Utc>> =
        sqlx::query_scalar!("SELECT max(created_at) FROM ipp_actions WHERE kind <> 'observe'")
            .fetch_one(&pool)
            .await?;
    let dlq = status::dlq(&kafka, &config.dlq_topic, Some(&pool)).await?;
    pool.close().await;
    let newest_age = newest_action.map(|t| (Utc::now() - t).num_milliseconds() as f64 / 1000.0);

    if args.json {
        return output::json_lines([json!({
            "service": "ipp-actions",
            "topic": config.ipp_topic,
            "group": config.group,
            "checkpoint_source": "kafka committed offsets of the group",
            "partitions": partitions,
            "total_lag": status::total_lag(&partitions),
            // Always true (a database without the ledger is an error): kept for scripts.
            "ledger_exists": true,
            "actions": counts,
            "reads": reads,
            "unpublished_observations": unpublished,
            "oldest_pending_age_seconds": oldest_pending,
            "newest_action_at": newest_action,
            "newest_action_age_seconds": newest_age,
            "dlq": dlq,
        })]);
    }
    let mut text = format!(
        "ipp-actions  topic {}  group {}  (checkpoint: the group's committed offsets)\n",
        config.ipp_topic, config.group
    );
    text.push_str(&status::partitions_table(&partitions));
    text.push_str(&format!(
        "total lag       {}\n",
        status::total_lag(&partitions)
    ));
    let count = |s: &str| counts.get(s).cloned().unwrap_or(json!(0));
    text.push_str(&format!(
        "actions         pending {}  succeeded {}  skipped {}  failed {}\n",
        count("pending"),
        count("succeeded"),
        count("skipped"),
        count("failed"),
    ));
    let read = |s: &str| reads.get(s).cloned().unwrap_or(json!(0));
    text.push_str(&format!(
        "reads of orders pending {}  succeeded {}  failed {}\n",
        read("pending"),
        read("succeeded"),
        read("failed"),
    ));
    text.push_str(&format!("unpublished     {unpublished} observations\n"));
    text.push_str(&status::age_line("oldest pending", oldest_pending));
    text.push('\n');
    text.push_str(&status::age_line("newest action", newest_age));
    text.push('\n');
    text.push_str(&status::dlq_line(&dlq));
    output::line(&text)
}
