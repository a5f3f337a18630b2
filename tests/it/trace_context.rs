//! W3C Trace Context through the log: ipp-ingest continues a webhook's `traceparent`
//! (or starts a trace) and writes its span's context in the record's headers, the body
//! untouched; ipp-actions keeps it with the action and sends a child span of it on every
//! Order Management request, so one payment is one trace from the webhook to the
//! capture. A command continues its own trace the same way. Child processes, a real
//! broker, the simulator recording each request's `traceparent`.

use std::time::Duration;

use chrono::Utc;
use ipp_schemas::trace::TraceContext;
use ipp_tests::{
    cli,
    eventually::eventually,
    ingest::post_webhook,
    inprocess::commands_topic_of,
    kafka::{read_topic, Record},
    otlp::{OtlpReceiver, ReceivedSpan},
    process::ChildConfig,
    processes::Processes,
    produce::ipp_body,
    projector::FINALIZED,
    signer::Signer,
};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use reqwest::StatusCode;
use serde_json::Value;
use uuid::Uuid;

const MERCHANT: &str = "DM00000000";
const CALLER: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const WAIT: Duration = Duration::from_secs(90);

/// Posts a signed finalized event for `order` with the headers of `signed` and, when
/// given, `traceparent`; asserts its 200. Returns the body.
async fn finalize(processes: &Processes, order: Uuid, traceparent: Option<&str>) -> Vec<u8> {
    let body = ipp_body(
        &format!("kevt_fin_{}", order.simple()),
        FINALIZED,
        MERCHANT,
        Uuid::new_v4(),
        Utc::now(),
        Some(order),
        None,
    );
    let signed = Signer::new(&processes.secret).sign(&body);
    let response = match traceparent {
        None => post_webhook(&processes.ingest_url(), &body, Some(&signed)).await,
        Some(traceparent) => {
            let mut request = reqwest::Client::new()
                .post(processes.webhook_url())
                .header("content-type", "application/json")
                .header("traceparent", traceparent)
                .body(body.clone());
            for (name, value) in signed.headers() {
                request = request.header(name, value);
            }
            request.send().await.expect("request")
        }
    };
    assert_eq!(response.status(), StatusCode::OK);
    body
}

/// The simulator's requests for `order` (`GET /…/orders/{id}`, `POST …/captures`, …)
/// with their trace contexts, in order, once one ends with `until`.
async fn calls_of(processes: &Processes, order: Uuid, until: &str) -> Vec<(String, TraceContext)> {
    let path = format!("/ordermanagement/v1/orders/{order}");
    let of_order = |calls: Vec<Value>| -> Vec<(String, Option<TraceContext>)> {
        calls
            .into_iter()
            .filter(|c| c["path"].as_str().is_some_and(|p| p.starts_with(&path)))
            .map(|c| {
                let what = format!(
                    "{} {}",
                    c["method"].as_str().unwrap(),
                    c["path"].as_str().unwrap()
                );
                (
                    what,
                    c["traceparent"].as_str().and_then(TraceContext::parse),
                )
            })
            .collect()
    };
    eventually(
        WAIT,
        &format!("a request for {order} ending with {until}"),
        || async {
            of_order(processes.sim.calls().await)
                .iter()
                .any(|(what, _)| what.ends_with(until))
        },
    )
    .await;
    of_order(processes.sim.calls().await)
        .into_iter()
        .map(|(what, context)| {
            let context = context.unwrap_or_else(|| panic!("{what}: no valid traceparent"));
            (what, context)
        })
        .collect()
}

/// The record ingest stored with `body`, and the trace context of its header.
fn stored(records: &[Record], body: &[u8]) -> TraceContext {
    let record = records
        .iter()
        .find(|r| r.value == body)
        .expect("the body is stored byte for byte");
    TraceContext::parse(record.header("traceparent").expect("a traceparent header"))
        .expect("a valid traceparent")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhooks_trace_reaches_every_order_management_request_of_its_capture() {
    let processes = Processes::start().await;
    let (_ingest, _projector, _actions) = (
        processes.ingest(),
        processes.projector(),
        processes.actions(),
    );
    let caller = TraceContext::parse(CALLER).unwrap();

    // With the caller's trace, without one, and with one that is not valid.
    let continued = Uuid::new_v4();
    let started = Uuid::new_v4();
    let malformed = Uuid::new_v4();
    let bodies = [
        finalize(&processes, continued, Some(CALLER)).await,
        finalize(&processes, started, None).await,
        finalize(&processes, malformed, Some("00-not-a-trace-01")).await,
    ];
    let records = read_topic(&processes.brokers, &processes.ipp_topic);
    let traces: Vec<TraceContext> = bodies.iter().map(|b| stored(&records, b)).collect();
    assert_eq!(
        traces[0].trace_id(),
        caller.trace_id(),
        "the caller's trace continued"
    );
    assert_ne!(traces[0].span_id(), caller.span_id(), "ingest's own span");
    assert_ne!(
        traces[1].trace_id(),
        traces[2].trace_id(),
        "each starts its own trace"
    );
    assert_ne!(traces[2].trace_id(), caller.trace_id());

    for (order, trace) in [continued, started, malformed].into_iter().zip(&traces) {
        // The capture's read of the order, then the capture: both children of ingest's
        // span. (The reads Kustom's capture.created prompts later are its own trace.)
        let calls = calls_of(&processes, order, "/captures").await;
        let capture = calls
            .iter()
            .position(|(what, _)| what.ends_with("/captures"))
            .unwrap();
        let calls = &calls[..=capture];
        assert_eq!(calls.len(), 2, "{calls:?}");
        for (what, context) in calls {
            assert_eq!(context.trace_id(), trace.trace_id(), "{what}");
            assert_ne!(
                context.span_id(),
                trace.span_id(),
                "{what}: a span of its own"
            );
        }
        assert_ne!(calls[0].1.span_id(), calls[1].1.span_id());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commands_refund_request_continues_the_commands_trace() {
    let processes = Processes::start().await;
    let (_ingest, _projector, _actions) = (
        processes.ingest(),
        processes.projector(),
        processes.actions(),
    );
    let order = Uuid::new_v4();
    finalize(&processes, order, None).await;
    let capture = calls_of(&processes, order, "/captures").await;

    let order_id = order.to_string();
    let env = processes.actions_config().env();
    let args = [
        "command",
        "issue",
        "refund",
        &order_id,
        "--amount",
        "100",
        "--wait-secs",
        "60",
        "--json",
    ];
    let issued = cli::run_async("ipp-actions", &args, &env, WAIT)
        .await
        .success();
    assert!(issued.stdout.contains("\"succeeded\""), "{}", issued.stdout);
    let commands = read_topic(&processes.brokers, &commands_topic_of(&processes.ipp_topic));
    assert_eq!(commands.len(), 1);
    let trace = TraceContext::parse(commands[0].header("traceparent").expect("traceparent"))
        .expect("valid");
    let calls = calls_of(&processes, order, "/refunds").await;
    let (_, refund) = calls
        .iter()
        .find(|(what, _)| what.ends_with("/refunds"))
        .unwrap();
    assert_eq!(refund.trace_id(), trace.trace_id());
    assert_ne!(
        refund.trace_id(),
        capture[0].1.trace_id(),
        "not the capture's trace"
    );
}

/// The spans the services export over OTLP, once `OTEL_EXPORTER_OTLP_ENDPOINT` is set
/// (nothing else): one tree from the caller's span to the capture request, with the ids
/// that travel in the record headers and the requests, and the projector's batch linked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exported_spans_make_one_trace_from_the_webhook_to_the_capture() {
    let receiver = OtlpReceiver::start().await;
    let mut processes = Processes::start().await;
    processes.service_env = receiver.env();
    let (_ingest, _projector, _actions) = (
        processes.ingest(),
        processes.projector(),
        processes.actions(),
    );
    let caller = TraceContext::parse(CALLER).unwrap();
    let order = Uuid::new_v4();
    let body = finalize(&processes, order, Some(CALLER)).await;
    let record = stored(&read_topic(&processes.brokers, &processes.ipp_topic), &body);
    let calls = calls_of(&processes, order, "/captures").await;
    let (_, capture) = calls
        .iter()
        .find(|(what, _)| what.ends_with("/captures"))
        .unwrap();

    // Spans leave in batches (every 5 s by default).
    let in_trace = |spans: &[ReceivedSpan], id: &str| -> Option<ReceivedSpan> {
        spans.iter().find(|s| s.span_id == id).cloned()
    };
    eventually(WAIT, "the capture's client span exported", || async {
        in_trace(&receiver.spans(), &capture.span_id()).is_some()
    })
    .await;
    eventually(WAIT, "the projector's batch span exported", || async {
        receiver
            .spans()
            .iter()
            .any(|s| s.service == "ipp-projector")
    })
    .await;
    let spans = receiver.spans();

    let webhook = in_trace(&spans, &record.span_id()).expect("ingest's span, as in the record");
    assert_eq!(webhook.service, "ipp-ingest");
    assert_eq!(webhook.kind, SpanKind::Server);
    assert_eq!(webhook.trace_id, caller.trace_id());
    assert_eq!(
        webhook.parent_span_id,
        caller.span_id(),
        "a child of the caller's"
    );
    assert_eq!(webhook.attribute("ipp.outcome"), Some("accepted"));
    assert_eq!(webhook.attribute("ipp.event_type"), Some(FINALIZED));
    assert!(!webhook.is_error);

    let request = in_trace(&spans, &capture.span_id()).unwrap();
    assert_eq!(request.service, "ipp-actions");
    assert_eq!(request.kind, SpanKind::Client);
    assert_eq!(request.name, "capture");
    assert_eq!(request.trace_id, caller.trace_id());
    assert!(!request.is_error);
    assert!(
        request
            .attribute("http.response.status_code")
            .is_some_and(|s| s.starts_with('2')),
        "{request:?}"
    );
    let consumed = in_trace(&spans, &request.parent_span_id).expect("the capture's parent");
    assert_eq!(consumed.service, "ipp-actions");
    assert_eq!(consumed.kind, SpanKind::Consumer);
    assert_eq!(consumed.trace_id, caller.trace_id());
    assert_eq!(
        consumed.parent_span_id,
        record.span_id(),
        "a child of ingest's"
    );
    assert_eq!(
        consumed.attribute("messaging.destination.name"),
        Some(processes.ipp_topic.as_str())
    );

    let batch = spans
        .iter()
        .find(|s| {
            s.service == "ipp-projector" && s.links.contains(&(record.trace_id(), record.span_id()))
        })
        .unwrap_or_else(|| panic!("a projector span linked to the record: {spans:#?}"));
    assert_eq!(batch.kind, SpanKind::Consumer);
    assert_ne!(
        batch.trace_id,
        caller.trace_id(),
        "a batch is a trace of its own"
    );
}
