//! Signature verification: arbitrary headers and bodies never panic the verifier, a body
//! signed by an independent reference signer (HMAC-SHA256 over `id.timestamp.body`, from
//! the Standard Webhooks spec) verifies exactly when its timestamp is within the
//! tolerance, and nothing verifies without the right signature.
#![no_main]

use arbitrary::Arbitrary;
use base64::{engine::general_purpose::STANDARD, Engine};
use hmac::{Hmac, Mac};
use http::{HeaderMap, HeaderName, HeaderValue};
use ipp_ingest::verify::{Verifier, MAX_WEBHOOK_ID_BYTES};
use libfuzzer_sys::fuzz_target;
use sha2::Sha256;

const KEY: &[u8] = b"fuzzing-key-0123456789abcdef";
const TOLERANCE: i64 = 300;

#[derive(Debug, Arbitrary)]
struct Input {
    webhook_id: String,
    timestamp: String,
    /// Extra `webhook-signature` text: other entries, garbage, or the whole header.
    signature: String,
    body: Vec<u8>,
    now: i64,
    /// Put the reference signer's entry into the signature header.
    sign: bool,
    /// Sign with this timestamp offset from `now` (when `sign`), instead of `timestamp`.
    skew: Option<i16>,
    /// Extra headers, which may repeat the signed ones.
    extra: Vec<(u8, String)>,
}

fn reference_signature(id: &str, timestamp: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(KEY).expect("any key length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    STANDARD.encode(mac.finalize().into_bytes())
}

fn insert(headers: &mut HeaderMap, name: &'static str, value: &str) -> bool {
    match HeaderValue::from_str(value) {
        Ok(value) => {
            headers.append(HeaderName::from_static(name), value);
            true
        }
        Err(_) => false,
    }
}

fuzz_target!(|input: Input| {
    let secret = format!("whsec_{}", STANDARD.encode(KEY));
    let verifier = Verifier::new([secret.as_str()], TOLERANCE as u64).expect("valid secret");
    let timestamp = match (input.sign, input.skew) {
        (true, Some(skew)) => input.now.saturating_add(i64::from(skew)).to_string(),
        _ => input.timestamp.clone(),
    };
    let expected = reference_signature(&input.webhook_id, &timestamp, &input.body);
    let mut signature = input.signature.clone();
    if input.sign {
        signature = format!("{signature} v1,{expected}");
    }

    let mut headers = HeaderMap::new();
    let complete = insert(&mut headers, "webhook-id", &input.webhook_id)
        & insert(&mut headers, "webhook-timestamp", &timestamp)
        & insert(&mut headers, "webhook-signature", &signature);
    let names = [
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
        "content-type",
    ];
    let mut repeated = false;
    for (which, value) in &input.extra {
        let name = names[usize::from(*which) % names.len()];
        repeated |= insert(&mut headers, name, value) && name != "content-type";
    }

    let verdict = verifier.verify(&headers, &input.body, input.now);
    let offered_right_entry = signature
        .split(' ')
        .any(|entry| entry == format!("v1,{expected}"));
    if verdict.is_ok() {
        // Accepted: the right signature was offered, in time. (A repeated header may
        // carry it too; the verifier reads the first of each.)
        assert!(complete, "accepted a request with an unusable header");
        assert!(
            offered_right_entry || repeated,
            "accepted without the reference signature: {input:?}"
        );
        let ts: i64 = timestamp.parse().expect("accepted timestamps are integers");
        assert!(input.now.abs_diff(ts) <= TOLERANCE as u64 || repeated);
    } else if complete && input.sign && !repeated {
        // Refused although correctly signed: only the clock may say no, or a header the
        // verifier documents it cannot use (empty, not visible ASCII, over its size).
        if let (Some(skew), true) = (input.skew, input.signature.is_empty()) {
            let ts = input.now.saturating_add(i64::from(skew));
            let in_time = i64::from(skew).abs() <= TOLERANCE && ts >= 0;
            let usable_id = !input.webhook_id.is_empty()
                && input.webhook_id.len() <= MAX_WEBHOOK_ID_BYTES
                && input.webhook_id.bytes().all(|b| (0x20..0x7f).contains(&b) || b == b'\t');
            assert!(
                !(in_time && usable_id),
                "refused a correctly signed, timely request: {verdict:?} {input:?}"
            );
        }
    }
});
