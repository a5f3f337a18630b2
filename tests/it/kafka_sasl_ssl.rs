//! The services on a managed-style Kafka: a broker whose client listener is SASL_SSL
//! with SCRAM-SHA-512 (a self-signed certificate made with keytool, a SCRAM user created
//! at format time), and ipp-ingest, ipp-projector and ipp-actions as child processes
//! configured for it only through `KAFKA_PROPERTIES_FILE`, with a password that
//! `KAFKA_PROPERTIES` could not carry (a comma) and that a properties file must not
//! cut at `#` or `=`. The harness creates topics and reads back over the broker's
//! PLAINTEXT listener; the services are never given it.

use std::time::Duration;

use chrono::Utc;
use ipp_service::{KafkaPropertiesFile, ListenArgs};
use ipp_tests::{
    eventually::eventually,
    ingest::post_webhook,
    inprocess::ingest_config,
    json_of,
    kafka::{self, SaslSslBroker},
    orders::order_row,
    process::Service,
    processes::{Processes, ServicesKafka},
    produce::ipp_body,
    projector::FINALIZED,
    signer::Signer,
};
use sqlx::PgPool;
use uuid::Uuid;

const USERNAME: &str = "ipp-services";
/// A comma (why the file exists), `#` and `=` (which the file must keep as they are).
const PASSWORD: &str = "s3cret,with#hash=and:colon";
const MERCHANT: &str = "DM00000000";
const WAIT: Duration = Duration::from_secs(90);

async fn session_status(pool: &PgPool, order: Uuid) -> Option<String> {
    sqlx::query_scalar("SELECT status FROM ipp_sessions WHERE order_id = $1")
        .bind(order)
        .fetch_optional(pool)
        .await
        .expect("ipp_sessions")
}

/// A finalized session posted to ingest is stored over SASL_SSL, projected, captured
/// once at the simulator, and the simulator's `capture.created` webhook comes back
/// through the same listener until the order is in sync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_services_run_end_to_end_on_a_sasl_ssl_listener_with_scram() {
    let broker = SaslSslBroker::start(USERNAME, PASSWORD);
    let services = ServicesKafka {
        brokers: broker.sasl_ssl_brokers(),
        properties_file: broker.client_properties_file(USERNAME, PASSWORD),
    };
    let processes = Processes::start_on(broker.plaintext_brokers(), Some(services), |_| {}).await;
    let ingest_config = processes.ingest_config();
    assert_eq!(ingest_config.kafka.brokers, broker.sasl_ssl_brokers());
    let file = ingest_config.kafka.properties_file.as_ref().expect("file");
    assert!(
        file.pairs()
            .any(|(key, value)| key == "sasl.password" && value == PASSWORD),
        "the file gives the password whole"
    );

    let ingest = processes.ingest();
    let _projector = processes.projector();
    let _actions = processes.actions();
    let order = Uuid::new_v4();
    processes.finalize(MERCHANT, order).await;

    let pool = processes.database.pool().await;
    eventually(WAIT, "the session projected as finalized", || async {
        session_status(&pool, order).await.as_deref() == Some("finalized")
    })
    .await;
    let order_id = order.to_string();
    eventually(WAIT, "one capture at the simulator", || async {
        processes.sim.captures(&order_id).await == 1
    })
    .await;
    eventually(WAIT, "the order in sync with one capture", || async {
        order_row(&pool, order).await.is_some_and(|row| {
            row["reconciliation_state"] == "in_sync"
                && row["capture_ids"]
                    .as_array()
                    .is_some_and(|ids| ids.len() == 1)
        })
    })
    .await;
    let stored = kafka::read_topic(&processes.brokers, &processes.ipp_topic);
    assert_eq!(stored.len(), 1, "the finalized event, once");
    assert!(
        !ingest.logs().contains(PASSWORD),
        "ingest printed the SASL password"
    );
}

/// With a wrong password the broker refuses the SCRAM handshake: ingest stores nothing
/// and answers 503 (Kustom delivers again later), never 200, is not ready, and its log
/// names the authentication failure without printing the password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_sasl_password_gets_503_never_200() {
    let broker = SaslSslBroker::start(USERNAME, PASSWORD);
    let plaintext = broker.plaintext_brokers();
    let ipp_topic = kafka::create_topic(&plaintext, "sasl_ipp", 1).await;
    let other_topic = kafka::create_topic(&plaintext, "sasl_other", 1).await;
    let wrong_password = format!("{PASSWORD}-not");
    let secret = Signer::random_secret();
    let mut config = ingest_config(
        &broker.sasl_ssl_brokers(),
        &ipp_topic,
        &other_topic,
        std::slice::from_ref(&secret),
    );
    config.listen = ListenArgs::new(([127, 0, 0, 1], 0).into());
    config.kafka.properties_file = Some(
        KafkaPropertiesFile::read(broker.client_properties_file(USERNAME, &wrong_password))
            .expect("properties file"),
    );
    let mut ingest = Service::start(&config, &[]);
    let base = format!("http://{}", ingest.listen_addr(WAIT));

    for attempt in 0..2 {
        let body = ipp_body(
            &format!("kevt_sasl_wrong_{attempt}"),
            FINALIZED,
            MERCHANT,
            Uuid::new_v4(),
            Utc::now(),
            Some(Uuid::new_v4()),
            None,
        );
        let signed = Signer::new(&secret).sign(&body);
        let response = post_webhook(&base, &body, Some(&signed)).await;
        assert_eq!(response.status(), 503, "attempt {attempt}");
        assert!(response.headers().contains_key("retry-after"));
        assert_eq!(json_of(response).await["error"], "log_unavailable");
    }
    let ready = reqwest::get(format!("{base}/readyz"))
        .await
        .expect("readyz");
    assert_eq!(ready.status(), 503, "not ready without a usable broker");
    assert_eq!(kafka::watermarks(&plaintext, &ipp_topic, 0), (0, 0));

    let logs = ingest.logs();
    assert!(
        logs.contains("Authentication failed"),
        "the log names the failed SASL authentication:\n{logs}"
    );
    for part in [PASSWORD, wrong_password.as_str(), "s3cret"] {
        assert!(!logs.contains(part), "ingest printed the password");
    }
    ingest.kill();
}
