//! `ipp-ingest` as a black box: real HTTP, a real broker. In-process, except where a
//! real process is the point: SIGTERM, refusing to start, its logs and `--help`.

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

use ipp_ingest::Clock;
use ipp_service::{ListenArgs, LogFormat};
use ipp_tests::{
    eventually::eventually,
    fixture,
    ingest::{post_webhook, Ingest, Options},
    inprocess::{add_properties, chain, TestIngest},
    json_of,
    kafka::{self, OwnBroker},
    process::{self, Service},
    signer::{Signed, Signer},
};
use serde_json::{json, Value};

/// An ingest configuration on fresh topics, for a child process that logs the address
/// it got on 127.0.0.1:0; and its secrets.
async fn child_config(options: &Options) -> (ipp_ingest::Config, Vec<String>) {
    let (mut config, secrets) = Ingest::config(options).await;
    config.listen = ListenArgs::new("127.0.0.1:0".parse().unwrap());
    (config, secrets)
}

#[tokio::test]
async fn documented_examples_are_stored_byte_for_byte_keyed_by_session() {
    let ingest = Ingest::start().await;
    let mut sent = Vec::new();
    for name in [
        "documented-session-activated.json",
        "documented-session-finalized.json",
    ] {
        let body = fixture(name);
        let signed = ingest.signer().sign(&body);
        let response = ingest.post(&body, Some(&signed)).await;
        assert_eq!(response.status(), 200, "{name}");
        let answer = json_of(response).await;
        assert_eq!(answer["status"], "stored");
        sent.push((body, signed, answer));
    }
    let records = ingest.ipp_records();
    assert_eq!(records.len(), 2);
    for (body, signed, answer) in sent {
        let event: Value = serde_json::from_slice(&body).unwrap();
        let record = records
            .iter()
            .find(|r| r.partition == answer["partition"] && r.offset == answer["offset"])
            .expect("record at the answered position");
        assert_eq!(record.value, body, "value must be the exact bytes sent");
        assert_eq!(record.key_str(), event["data"]["session_id"].as_str());
        assert_eq!(record.header("kustom-event-id"), event["id"].as_str());
        assert_eq!(record.header("kustom-event-type"), event["type"].as_str());
        assert_eq!(record.header("kustom-merchant-id"), Some("DM11917000"));
        assert_eq!(
            record.header("webhook-id"),
            Some(signed.webhook_id.as_str())
        );
        assert_eq!(
            record.header("webhook-timestamp"),
            Some(signed.timestamp.to_string().as_str())
        );
        let received_at = record.header("ipp-received-at").expect("receive time");
        let received_at = chrono::DateTime::parse_from_rfc3339(received_at).expect("RFC 3339");
        assert!(
            (chrono::Utc::now() - received_at.to_utc())
                .num_seconds()
                .abs()
                < 60
        );
    }
    assert!(ingest.other_records().is_empty());
}

#[tokio::test]
async fn events_of_one_session_share_a_partition_and_duplicates_are_accepted() {
    let ingest = Ingest::start().await;
    let session = uuid::Uuid::new_v4();
    let bodies: Vec<Vec<u8>> = ["created", "activated", "cancelled"]
        .iter()
        .map(|kind| {
            serde_json::to_vec(&json!({
                "id": format!("kevt_{kind}_{session}"), "merchant_id": "M1",
                "timestamp": "2026-06-05T18:30:00.123456789Z", "type": format!("ipp.session.{kind}"),
                "data": {"session_id": session, "order_id": null, "failure_reason": null}
            }))
            .unwrap()
        })
        .collect();
    for body in bodies.iter().chain(std::iter::once(&bodies[0])) {
        assert_eq!(ingest.post_signed(body).await.status(), 200);
    }
    let records = ingest.ipp_records();
    assert_eq!(
        records.len(),
        4,
        "the duplicate is stored too: dedup is downstream"
    );
    assert!(records.iter().all(|r| r.partition == records[0].partition));
    assert!(records
        .iter()
        .all(|r| r.key_str() == Some(session.to_string().as_str())));
}

#[tokio::test]
async fn either_secret_signs_during_a_rotation() {
    let ingest = Ingest::start_with(
        Options {
            secrets: 2,
            ..Options::default()
        },
        |_| {},
    )
    .await;
    let body = fixture("session-created.json");
    for secret in &ingest.secrets {
        let signed = Signer::new(secret).sign(&body);
        assert_eq!(ingest.post(&body, Some(&signed)).await.status(), 200);
    }
    assert_eq!(ingest.ipp_records().len(), 2);
}

/// The common refusals together; each bad-input case has a test of its own in
/// ingest_bad_input.rs. Ingest's clock is fixed, so the timestamp cases sit exactly one
/// second beyond the tolerance without racing the clock.
#[tokio::test]
async fn bad_signatures_get_401_and_store_nothing() {
    let now = chrono::Utc::now().timestamp();
    let ingest = Ingest::start_with(
        Options {
            clock: Clock::fixed(now),
            ..Options::default()
        },
        |_| {},
    )
    .await;
    let body = fixture("documented-session-finalized.json");
    let good = ingest.sign(&body);
    let stranger = Signer::new(&Signer::random_secret());

    let mut tampered = body.clone();
    let last = tampered.len() - 2;
    tampered[last] = b' ';
    let mut cases: Vec<(&str, Vec<u8>, Signed)> = vec![
        (
            "wrong secret",
            body.clone(),
            stranger.sign_at("m0", now, &body),
        ),
        ("tampered body", tampered, good.clone()),
        (
            "stale timestamp",
            body.clone(),
            ingest.signer().sign_at("m1", now - 301, &body),
        ),
        (
            "future timestamp",
            body.clone(),
            ingest.signer().sign_at("m2", now + 301, &body),
        ),
        (
            "garbage signature",
            body.clone(),
            Signed {
                signature: "v1,AAAA".into(),
                ..good.clone()
            },
        ),
        (
            "wrong scheme",
            body.clone(),
            Signed {
                signature: good.signature.replace("v1,", "v2,"),
                ..good.clone()
            },
        ),
    ];
    for (what, body, signed) in cases.drain(..) {
        let response = ingest.post(&body, Some(&signed)).await;
        assert_eq!(response.status(), 401, "{what}");
        assert_eq!(
            json_of(response).await["error"],
            "invalid_signature",
            "{what}"
        );
    }
    // Each header missing in turn.
    for missing in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
        let mut request = reqwest::Client::new()
            .post(format!("{}/webhooks/kustom", ingest.url))
            .body(body.clone());
        for (name, value) in good.headers() {
            if name != missing {
                request = request.header(name, value);
            }
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 401, "without {missing}");
        let message = json_of(response).await["message"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(
            message.contains(missing),
            "the error names {missing}: {message}"
        );
    }
    ingest.nothing_stored();
}

#[tokio::test]
async fn other_kustom_events_go_to_their_own_topic_keyed_by_event_id() {
    let ingest = Ingest::start().await;
    let body = fixture("capture-created.json");
    let response = ingest.post_signed(&body).await;
    assert_eq!(response.status(), 200);
    let dispute = br#"{"id":"kevt_dispute1","type":"dispute.created","timestamp":"2026-06-05T19:00:00Z","data":{"order_id":"x"}}"#;
    assert_eq!(ingest.post_signed(dispute).await.status(), 200);
    let records = ingest.other_records();
    assert_eq!(records.len(), 2);
    let capture = records
        .iter()
        .find(|r| r.value == body)
        .expect("capture.created stored as sent");
    assert_eq!(capture.key_str(), Some("kevt_0Capture0000000000001"));
    assert_eq!(capture.header("kustom-event-type"), Some("capture.created"));
    assert!(ingest.ipp_records().is_empty());
}

#[tokio::test]
async fn unknown_ipp_types_and_fields_are_kept() {
    let ingest = Ingest::start().await;
    let body = fixture("unknown-ipp-type-with-extra-fields.json");
    assert_eq!(ingest.post_signed(&body).await.status(), 200);
    let records = ingest.ipp_records();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].value, body);
}

/// The broker process is killed and restarted on the same data directory. Meanwhile
/// every request is a 503, never a 200; afterwards the same idempotent producer (none
/// replaced) delivers again, and every event answered 200 is in the log.
#[tokio::test]
async fn broker_outage_answers_503_never_200_and_the_same_producer_recovers() {
    let mut broker = OwnBroker::start();
    let timeout_ms = 2000;
    let ingest = Ingest::start_with(
        Options {
            brokers: broker.brokers(),
            ..Options::default()
        },
        |config| config.produce_timeout_ms = timeout_ms,
    )
    .await;
    let template: Value = serde_json::from_slice(&fixture("session-created.json")).unwrap();
    let body = |n: usize| {
        let mut event = template.clone();
        event["id"] = json!(format!("kevt_outage_{n}"));
        serde_json::to_vec(&event).unwrap()
    };
    let mut acknowledged = Vec::new();
    let mut sent = 1;
    let response = ingest.post_signed(&body(sent)).await;
    assert_eq!(response.status(), 200);
    acknowledged.push(body(sent));

    broker.stop();
    for _ in 0..3 {
        let started = Instant::now();
        sent += 1;
        let response = ingest.post_signed(&body(sent)).await;
        let waited = started.elapsed();
        assert_eq!(response.status(), 503);
        assert!(response.headers().contains_key("retry-after"));
        assert_eq!(json_of(response).await["error"], "log_unavailable");
        // Bounded by the produce timeout (plus a little for the outer guard).
        assert!(
            waited < Duration::from_millis(timeout_ms + 1500),
            "503 took {waited:?}"
        );
    }
    let ready = reqwest::get(format!("{}/readyz", ingest.url))
        .await
        .unwrap();
    assert_eq!(ready.status(), 503, "not ready while the broker is down");

    broker.restart();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut statuses = Vec::new();
    while acknowledged.len() < 11 {
        sent += 1;
        let status = ingest.post_signed(&body(sent)).await.status().as_u16();
        statuses.push(status);
        match status {
            200 => acknowledged.push(body(sent)),
            503 => assert!(
                acknowledged.len() == 1,
                "a 503 after the recovery: {statuses:?}"
            ),
            other => panic!("only 200 or 503, got {other}: {statuses:?}"),
        }
        assert!(Instant::now() < deadline, "never recovered: {statuses:?}");
        if status == 503 {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    let metrics = ingest.metrics().await;
    assert!(
        metrics.contains("ipp_ingest_producer_replacements_total 0"),
        "the producer was replaced: {metrics}"
    );
    // No false 200: every acknowledged body is in the log, byte for byte. The 503s may or
    // may not be (Kustom delivers them again; duplicates are removed downstream).
    let records = ingest.ipp_records();
    for body in &acknowledged {
        assert!(
            records.iter().any(|r| &r.value == body),
            "acknowledged but not in the log: {}",
            String::from_utf8_lossy(body)
        );
    }
    let sent_bodies: Vec<Vec<u8>> = (1..=sent).map(body).collect();
    assert!(records.iter().all(|r| sent_bodies.contains(&r.value)));
}

/// `KAFKA_PROPERTIES` can tune the producer but not weaken what a 200 means.
#[tokio::test]
async fn refuses_to_start_with_kafka_properties_that_weaken_a_200() {
    for (property, key) in [
        ("acks=1", "acks"),
        ("acks=0", "acks"),
        ("request.required.acks=1", "request.required.acks"),
        ("enable.idempotence=false", "enable.idempotence"),
        (
            "max.in.flight.requests.per.connection=6",
            "max.in.flight.requests.per.connection",
        ),
        ("max.in.flight=1000", "max.in.flight"),
    ] {
        let (mut config, _) = Ingest::config(&Options::default()).await;
        add_properties(&mut config.kafka.properties, &["linger.ms=5", property]);
        let started = TestIngest::spawn(config)
            .exited(Duration::from_secs(20))
            .await;
        let error = chain(&started.expect_err(property));
        assert!(
            error.contains(&format!("KAFKA_PROPERTIES sets {key}=")) && error.contains("weaken"),
            "{property}: the error names the setting: {error}"
        );
    }
    // Restating the guarantees, or tightening them, is fine.
    let ingest = Ingest::start_with(Options::default(), |config| {
        add_properties(
            &mut config.kafka.properties,
            &[
                "acks=-1",
                "enable.idempotence=true",
                "max.in.flight=5",
                "compression.type=zstd",
            ],
        );
    })
    .await;
    let body = fixture("session-created.json");
    assert_eq!(ingest.post_signed(&body).await.status(), 200);
    assert_eq!(ingest.ipp_records()[0].value, body);
}

/// A topic that does not exist is reported, never created: /readyz says 503 and names
/// it, webhooks get 503 (Kustom delivers them again), and once the operator creates it
/// ingest is ready without a restart.
#[tokio::test]
async fn a_missing_topic_is_reported_and_never_created() {
    let missing = ipp_tests::unique_name("ipp_events_not_created_yet");
    let ingest = Ingest::start_with(
        Options {
            ipp_topic: Some(missing.clone()),
            ..Options::default()
        },
        |config| config.produce_timeout_ms = 2000,
    )
    .await;
    let ready = reqwest::get(format!("{}/readyz", ingest.url))
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    let reason = ready.text().await.unwrap();
    assert!(
        reason.contains(&missing),
        "readyz names the topic: {reason}"
    );
    let response = ingest.post_signed(&fixture("session-created.json")).await;
    assert_eq!(response.status(), 503);
    assert_eq!(json_of(response).await["error"], "log_unavailable");
    assert!(
        !kafka::topic_exists(&ingest.brokers, &missing),
        "ingest created the topic"
    );

    kafka::create_named_topic(&ingest.brokers, &missing, 2).await;
    eventually(
        Duration::from_secs(30),
        "ready once the topic exists",
        || async {
            let ready = reqwest::get(format!("{}/readyz", ingest.url)).await;
            ready.is_ok_and(|r| r.status() == 200)
        },
    )
    .await;
    let body = fixture("session-created.json");
    let mut status = 0;
    // librdkafka learns of the new topic on its next metadata refresh.
    for _ in 0..30 {
        status = ingest.post_signed(&body).await.status().as_u16();
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(status, 200);
    assert!(ingest.ipp_records().iter().any(|r| r.value == body));
}

/// A request whose body is still arriving when SIGTERM comes is completed and stored;
/// the admin address serves `/metrics` until the drain is over.
#[tokio::test]
async fn in_flight_requests_complete_during_sigterm() {
    let (mut config, secrets) = child_config(&Options::default()).await;
    let admin = ipp_tests::ReservedPort::new();
    config.admin_listen = ipp_service::AdminListenArgs::new(Some(admin.addr()));
    let mut ingest = Service::start(&config, &[]);
    let address = ingest.listen_addr(Duration::from_secs(20)).to_string();
    let body = fixture("documented-session-finalized.json");
    let signed = Signer::new(&secrets[0]).sign(&body);
    let mut stream = TcpStream::connect(&address).unwrap();
    let mut head = format!(
        "POST /webhooks/kustom HTTP/1.1\r\nhost: {address}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
        body.len()
    );
    for (name, value) in signed.headers() {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(&body[..10]).unwrap();
    std::thread::sleep(Duration::from_millis(300));

    ingest.signal("TERM");
    std::thread::sleep(Duration::from_millis(500));
    assert!(ingest.is_running(), "exited with a request in flight");
    let metrics = reqwest::get(format!("http://{}/metrics", admin.addr()))
        .await
        .expect("the admin address answers during the drain")
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("\nipp_ingest_in_flight_requests 1\n"),
        "the request in flight is shown: {metrics}"
    );

    stream.write_all(&body[10..]).unwrap();
    let mut response = String::new();
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "got: {response}");

    let status = ingest.wait(Duration::from_secs(20));
    assert!(status.success(), "clean exit after SIGTERM: {status:?}");
    for address in [address, admin.addr().to_string()] {
        assert!(
            TcpStream::connect(&address).is_err(),
            "{address} still accepts after shutdown"
        );
    }
    let records = kafka::read_topic(&kafka::brokers(), &config.ipp_topic);
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].value, body);
}

#[tokio::test]
async fn refuses_to_start_without_secrets_unless_explicitly_insecure() {
    let (config, _) = child_config(&Options {
        secrets: 0,
        ..Options::default()
    })
    .await;
    let output = ipp_tests::cli::run(
        "ipp-ingest",
        &[],
        &process::ChildConfig::env(&config),
        Duration::from_secs(20),
    );
    assert!(!output.status.success(), "started without secrets");
    let stderr = &output.stderr;
    assert!(
        stderr.contains("KUSTOM_WEBHOOK_SECRETS"),
        "explains what to set: {stderr}"
    );

    let mut insecure = Service::start(&config, &["--insecure-skip-verify"]);
    let addr = insecure.listen_addr(Duration::from_secs(20));
    let body = fixture("session-created.json");
    let response = reqwest::Client::new()
        .post(format!("http://{addr}/webhooks/kustom"))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "unsigned accepted when insecure");
    insecure.kill();
    let logs = insecure.logs();
    assert!(
        logs.contains("WARN") && logs.contains("insecure-skip-verify"),
        "warns: {logs}"
    );
    assert_eq!(
        kafka::read_topic(&kafka::brokers(), &config.ipp_topic)[0].value,
        body
    );
}

/// With `INGEST_ADMIN_LISTEN`, `/metrics` is served there and no longer on the public
/// listener, which keeps the webhook and the probes.
#[tokio::test]
async fn metrics_move_to_the_admin_address() {
    // Port 0: the harness binds it before the service starts and says which it got.
    let any_port = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let ingest = Ingest::start_with(Options::default(), |config| {
        config.admin_listen = ipp_service::AdminListenArgs::new(Some(any_port));
    })
    .await;
    let admin = ingest.service.admin_addr.expect("an admin address was set");
    assert_eq!(
        ingest
            .post_signed(&fixture("session-created.json"))
            .await
            .status(),
        200
    );
    let get = |url: String| async move { reqwest::get(url).await.expect("GET") };
    let public = get(format!("{}/metrics", ingest.url)).await;
    assert_eq!(public.status(), 404);
    for probe in ["healthz", "readyz"] {
        assert_eq!(get(format!("{}/{probe}", ingest.url)).await.status(), 200);
        assert_eq!(get(format!("http://{admin}/{probe}")).await.status(), 200);
    }
    let metrics = get(format!("http://{admin}/metrics"))
        .await
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(
            r#"ipp_ingest_requests_total{event_type="ipp.session.created",outcome="accepted"} 1"#
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("ipp_ingest_build_info{version="),
        "{metrics}"
    );
    assert!(
        metrics.contains("\nprocess_resident_memory_bytes "),
        "{metrics}"
    );
    // The admin server serves nothing else.
    let webhook = reqwest::Client::new()
        .post(format!("http://{admin}/webhooks/kustom"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(webhook.status(), 404);
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let ingest = Ingest::start().await;
    assert_eq!(
        reqwest::get(format!("{}/healthz", ingest.url))
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        reqwest::get(format!("{}/readyz", ingest.url))
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        ingest
            .post_signed(&fixture("session-created.json"))
            .await
            .status(),
        200
    );
    assert_eq!(
        ingest
            .post(&fixture("session-created.json"), None)
            .await
            .status(),
        401
    );
    let metrics = ingest.metrics().await;
    assert!(
        metrics.contains(
            r#"ipp_ingest_requests_total{event_type="ipp.session.created",outcome="accepted"} 1"#
        ),
        "{metrics}"
    );
    assert!(metrics
        .contains(r#"ipp_ingest_requests_total{event_type="unknown",outcome="unauthorized"} 1"#));
    assert!(metrics.contains("ipp_ingest_produce_duration_seconds_bucket"));
    assert!(metrics.contains("ipp_ingest_in_flight_requests 0"));
    assert!(
        metrics.contains(r#"ipp_ingest_request_duration_seconds_count{outcome="accepted"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"ipp_ingest_request_duration_seconds_count{outcome="unauthorized"} 1"#),
        "{metrics}"
    );
    // The one record landed at offset 0 of its partition: the next one is 1.
    let high_offsets: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("ipp_ingest_partition_high_offset{"))
        .collect();
    assert!(
        high_offsets.len() == 1 && high_offsets[0].ends_with(" 1"),
        "{metrics}"
    );
    // The former names, kept for one release (CHANGELOG).
    assert!(
        metrics.contains(
            "\ningest_requests_total{event_type=\"ipp.session.created\",outcome=\"accepted\"} 1"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "# HELP ingest_in_flight_requests Deprecated: renamed ipp_ingest_in_flight_requests"
        ),
        "{metrics}"
    );
}

#[test]
fn help_documents_the_configuration() {
    let output = std::process::Command::new(process::bin_path("ipp-ingest"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    for setting in [
        "KAFKA_BROKERS",
        "INGEST_LISTEN",
        "KAFKA_PROPERTIES",
        "--kafka-property",
        "IPP_TOPIC",
        "KUSTOM_OTHER_TOPIC",
        "KUSTOM_WEBHOOK_SECRETS",
        "--insecure-skip-verify",
        "INGEST_SIGNATURE_TOLERANCE_SECS",
        "INGEST_MAX_BODY_BYTES",
        "INGEST_HEADER_READ_TIMEOUT_MS",
        "INGEST_BODY_READ_TIMEOUT_MS",
        "INGEST_MAX_CONNECTIONS",
        "INGEST_PRODUCE_TIMEOUT_MS",
        "LOG_FORMAT",
    ] {
        assert!(help.contains(setting), "--help does not mention {setting}");
    }
}

/// Logs name the event but never contain the body or a secret.
#[tokio::test]
async fn logs_carry_identifiers_but_never_bodies_or_secrets() {
    let (mut config, secrets) = child_config(&Options::default()).await;
    config.log.format = LogFormat::Json;
    let mut env = process::ChildConfig::env(&config);
    env.push(("RUST_LOG", "debug".to_owned()));
    let mut child = Service::spawn_watched("ipp-ingest", &[], &env);
    let addr = child.listen_addr(Duration::from_secs(20));
    let marker = "do-not-log-this-reason";
    let body = serde_json::to_vec(&json!({
        "id": "kevt_logcheck", "merchant_id": "M1", "timestamp": "2026-06-05T18:00:00Z",
        "type": "ipp.payment.failed",
        "data": {"session_id": "c749c48d-df11-4ae3-8e5f-2c8491b16214", "failure_reason": marker}
    }))
    .unwrap();
    let signed = Signer::new(&secrets[0]).sign(&body);
    let response = post_webhook(&format!("http://{addr}"), &body, Some(&signed)).await;
    assert_eq!(response.status(), 200);
    let status = child.terminate(Duration::from_secs(20));
    assert!(status.success(), "clean exit after SIGTERM: {status:?}");
    let logs = child.logs();
    assert!(
        logs.contains("kevt_logcheck"),
        "the event id is logged: {logs}"
    );
    assert!(
        logs.contains("c749c48d-df11-4ae3-8e5f-2c8491b16214"),
        "the session id is logged"
    );
    assert!(!logs.contains(marker), "the body leaked into the logs");
    let key = secrets[0].trim_start_matches("whsec_");
    assert!(!logs.contains(key), "the secret leaked into the logs");
    assert!(
        !logs.contains(&signed.signature),
        "the signature leaked into the logs"
    );
}

/// Its log pipe gone (the reader died), ingest keeps serving and still stops on SIGTERM:
/// a log line that cannot be written is dropped, never a panic in the task that logs.
#[tokio::test]
async fn a_dead_log_pipe_neither_breaks_requests_nor_shutdown() {
    let (config, secrets) = child_config(&Options {
        ..Options::default()
    })
    .await;
    let mut child = process::spawn_piped(&config, &[]);
    // The reader of both pipes goes away, as a log shipper that crashed would: once
    // the address is read, stdout is closed; stderr was never read.
    drop(child.stderr.take());
    let stdout = child.stdout.take().expect("stdout");
    let addr = process::read_listen_addr(stdout, Duration::from_secs(20));

    let body = fixture("session-created.json");
    let signed = Signer::new(&secrets[0]).sign(&body);
    let response = post_webhook(&format!("http://{addr}"), &body, Some(&signed)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        kafka::read_topic(&kafka::brokers(), &config.ipp_topic)[0].value,
        body
    );

    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "did not stop after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "clean exit after SIGTERM: {status:?}");
}
