//! Redriving a parked record: a copy to its source topic, recorded once the broker has
//! acknowledged it.

use std::time::Duration;

use ipp_schemas::dlq::header as dlq_header;
use rdkafka::{
    message::{Header, OwnedHeaders},
    producer::FutureRecord,
};

use super::{decide::refused, Decision, Redrive, RedriveOutcome};
use crate::{dlq::DlqRecord, redrives, Error};

/// Re-produces `record` to `topic` with its redrive count raised by one.
pub(super) async fn redrive(
    run: &Redrive<'_, impl super::ActionLedger>,
    record: &DlqRecord,
    topic: &str,
) -> Result<RedriveOutcome, Error> {
    let count = record.redrive_count();
    let outcome = |decision, redrive_count, target: String, detail: String| RedriveOutcome {
        position: record.position(),
        decision,
        target,
        redrive_count,
        detail,
    };
    if let Some(why) = refused(count, run.args) {
        return Ok(outcome(Decision::Refused, count, topic.to_owned(), why));
    }
    let Some(producer) = run.producer else {
        let detail = format!(
            "would re-produce {} to {topic} with dlq-redrive-count {}",
            record.event_id().unwrap_or_else(|| "the record".into()),
            count + 1
        );
        return Ok(outcome(
            Decision::WouldRedrive,
            count + 1,
            topic.to_owned(),
            detail,
        ));
    };
    let mut tx = run.pool.begin().await?;
    let claim = run.claim(record, count + 1);
    if !redrives::claim_for_topic(&mut tx, &claim, topic).await? {
        let detail = "redriven meanwhile by someone else".to_owned();
        return Ok(outcome(
            Decision::AlreadyRedriven,
            count + 1,
            topic.to_owned(),
            detail,
        ));
    }
    let copy_headers = redriven_headers(&record.headers, count + 1);
    let mut headers = OwnedHeaders::new_with_capacity(copy_headers.len());
    for (key, value) in &copy_headers {
        headers = headers.insert(Header {
            key: key.as_str(),
            value: value.as_deref(),
        });
    }
    let mut copy: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic).headers(headers);
    if let Some(key) = &record.key {
        copy = copy.key(key);
    }
    if let Some(value) = &record.value {
        copy = copy.payload(value);
    }
    let delivered = producer
        .send(copy, Duration::from_secs(30))
        .await
        .map_err(|(e, _)| Error::Kafka(e))?;
    redrives::record_delivery(
        &mut tx,
        run.dlq_topic,
        record.position(),
        delivered.partition,
        delivered.offset,
    )
    .await?;
    tx.commit().await?;
    Ok(outcome(
        Decision::Redriven,
        count + 1,
        format!("{topic}[{}]@{}", delivered.partition, delivered.offset),
        format!(
            "{} re-produced",
            record.event_id().unwrap_or_else(|| "record".into())
        ),
    ))
}

/// The headers of a redriven copy: the original ones in order, without any `dlq-*`
/// header (provenance and error belong to the parked record, not to the event), then
/// `dlq-redrive-count`.
pub fn redriven_headers(
    parked: &[(String, Option<Vec<u8>>)],
    count: u32,
) -> Vec<(String, Option<Vec<u8>>)> {
    parked
        .iter()
        .filter(|(key, _)| !key.starts_with("dlq-"))
        .cloned()
        .chain(std::iter::once((
            dlq_header::REDRIVE_COUNT.to_owned(),
            Some(count.to_string().into_bytes()),
        )))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(key: &str, value: &str) -> (String, Option<Vec<u8>>) {
        (key.to_owned(), Some(value.as_bytes().to_vec()))
    }

    #[test]
    fn copies_keep_the_ingest_headers_and_carry_the_count() {
        let parked = vec![
            h("kustom-event-id", "kevt_1"),
            h("ipp-received-at", "2026-11-26T10:00:00Z"),
            h("dlq-redrive-count", "1"),
            ("empty".to_owned(), None),
            h("dlq-source-topic", "ipp.events"),
            h("dlq-error", "boom"),
        ];
        assert_eq!(
            redriven_headers(&parked, 2),
            vec![
                h("kustom-event-id", "kevt_1"),
                h("ipp-received-at", "2026-11-26T10:00:00Z"),
                ("empty".to_owned(), None),
                h("dlq-redrive-count", "2"),
            ]
        );
    }
}
