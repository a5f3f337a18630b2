//! Property tests of the signature verifier against the independent reference signer in
//! the test harness (hmac + sha2, written from the Standard Webhooks spec).

use http::{HeaderMap, HeaderValue};
use ipp_ingest::verify::{Verifier, VerifyError};
use ipp_tests::signer::{Signed, Signer};
use proptest::prelude::*;

const NOW: i64 = 1_780_000_000;

fn headers(signed: &Signed) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in signed.headers() {
        map.insert(name, HeaderValue::from_str(&value).unwrap());
    }
    map
}

fn secret_from(key: &[u8]) -> String {
    use base64::Engine;
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(key)
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Whatever the reference signer signs, the verifier accepts.
    #[test]
    fn accepts_what_the_reference_signer_signs(
        key in proptest::collection::vec(any::<u8>(), 1..64),
        body in "\\PC{0,300}",
        webhook_id in "[a-zA-Z0-9_]{1,40}",
        skew in -300i64..=300,
    ) {
        let secret = secret_from(&key);
        let verifier = Verifier::new([secret.as_str()], 300).unwrap();
        let signed = Signer::new(&secret).sign_at(&webhook_id, NOW + skew, body.as_bytes());
        let accepted = verifier.verify(&headers(&signed), body.as_bytes(), NOW).unwrap();
        prop_assert_eq!(accepted.webhook_id, webhook_id);
    }

    /// Any single-byte change to the body, the id, the timestamp or the signature is refused.
    #[test]
    fn rejects_any_single_byte_change(
        key in proptest::collection::vec(any::<u8>(), 1..64),
        body in "[ -~]{1,200}",
        webhook_id in "[a-zA-Z0-9_]{1,40}",
        target in 0usize..4,
        position in any::<prop::sample::Index>(),
        replacement in any::<u8>(),
    ) {
        let secret = secret_from(&key);
        let verifier = Verifier::new([secret.as_str()], 300).unwrap();
        let signed = Signer::new(&secret).sign_at(&webhook_id, NOW, body.as_bytes());
        let mut body = body.into_bytes();
        let mut id = signed.webhook_id.clone().into_bytes();
        let mut timestamp = signed.timestamp.to_string().into_bytes();
        let mut signature = signed.signature.clone().into_bytes();
        let field = match target {
            0 => &mut body,
            1 => &mut id,
            2 => &mut timestamp,
            _ => &mut signature,
        };
        let i = position.index(field.len());
        // Printable replacement so the header stays a valid header value.
        let new = b' ' + (replacement % 95);
        prop_assume!(field[i] != new);
        field[i] = new;

        let mut map = HeaderMap::new();
        for (name, value) in [("webhook-id", &id), ("webhook-timestamp", &timestamp), ("webhook-signature", &signature)] {
            match HeaderValue::from_bytes(value) {
                Ok(v) => { map.insert(name, v); }
                Err(_) => return Ok(()),
            }
        }
        let result = verifier.verify(&map, &body, NOW);
        prop_assert!(result.is_err(), "accepted a changed {}", ["body", "id", "timestamp", "signature"][target]);
    }
}

#[test]
fn any_of_several_secrets_and_any_signature_entry_passes() {
    let (old, new) = (Signer::random_secret(), Signer::random_secret());
    let verifier = Verifier::new([old.as_str(), new.as_str()], 300).unwrap();
    let body = br#"{"id":"kevt_1"}"#;
    for secret in [&old, &new] {
        let signed = Signer::new(secret).sign_at("msg_1", NOW, body);
        assert!(verifier.verify(&headers(&signed), body, NOW).is_ok());
    }
    // Kustom signs with both secrets during a rotation: several space-separated entries.
    let stranger = Signer::new(&Signer::random_secret()).signature("msg_1", NOW, body);
    let mut both = Signer::new(&new).sign_at("msg_1", NOW, body);
    both.signature = format!("{stranger} {}", both.signature);
    assert!(verifier.verify(&headers(&both), body, NOW).is_ok());
}

#[test]
fn tolerance_is_configurable_and_applies_both_ways() {
    let secret = Signer::random_secret();
    let body = b"{}";
    let verifier = Verifier::new([secret.as_str()], 60).unwrap();
    let at = |offset: i64| headers(&Signer::new(&secret).sign_at("m", NOW + offset, body));
    assert!(verifier.verify(&at(-60), body, NOW).is_ok());
    assert!(verifier.verify(&at(60), body, NOW).is_ok());
    assert_eq!(
        verifier.verify(&at(-61), body, NOW).unwrap_err(),
        VerifyError::TooOld
    );
    assert_eq!(
        verifier.verify(&at(61), body, NOW).unwrap_err(),
        VerifyError::InFuture
    );
}

#[test]
fn a_signature_from_an_unknown_secret_is_refused() {
    let verifier = Verifier::new([Signer::random_secret().as_str()], 300).unwrap();
    let body = b"{}";
    let signed = Signer::new(&Signer::random_secret()).sign_at("m", NOW, body);
    assert_eq!(
        verifier.verify(&headers(&signed), body, NOW).unwrap_err(),
        VerifyError::NoMatch
    );
}

/// The Standard Webhooks reference vector (the spec's and svix's libraries' tests).
#[test]
fn the_reference_vector_verifies() {
    let verifier = Verifier::new(["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"], 300).unwrap();
    let body = br#"{"test": 2432232314}"#;
    let signed = Signed {
        webhook_id: "msg_p5jXN8AQM9LWM0D4loKWxJek".into(),
        timestamp: 1_614_265_330,
        signature: "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=".into(),
    };
    assert!(verifier
        .verify(&headers(&signed), body, 1_614_265_330)
        .is_ok());
}

/// The MAC is over the bytes: a body that is not UTF-8 verifies (and is then stored).
#[test]
fn bodies_that_are_not_utf8_verify_over_their_bytes() {
    let secret = Signer::random_secret();
    let verifier = Verifier::new([secret.as_str()], 300).unwrap();
    for body in [&b"\xff\xfe\x00binary"[..], b"", b"{\"id\":\"\xc3\x28\"}"] {
        let signed = Signer::new(&secret).sign_at("msg_bytes", NOW, body);
        assert!(verifier.verify(&headers(&signed), body, NOW).is_ok());
        let mut changed = body.to_vec();
        changed.push(b'!');
        assert_eq!(
            verifier.verify(&headers(&signed), &changed, NOW),
            Err(VerifyError::NoMatch)
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Any bytes at all, signed by the reference signer, verify.
    #[test]
    fn accepts_any_signed_bytes(
        key in proptest::collection::vec(any::<u8>(), 1..64),
        body in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        let secret = secret_from(&key);
        let verifier = Verifier::new([secret.as_str()], 300).unwrap();
        let signed = Signer::new(&secret).sign_at("msg_any", NOW, &body);
        prop_assert!(verifier.verify(&headers(&signed), &body, NOW).is_ok());
    }
}

#[test]
fn each_malformed_signature_header_has_its_reason() {
    let secret = Signer::random_secret();
    let verifier = Verifier::new([secret.as_str()], 300).unwrap();
    let body = b"{}";
    let good = Signer::new(&secret).sign_at("msg_1", NOW, body);
    let with_signature = |signature: &str| Signed {
        signature: signature.to_owned(),
        ..good.clone()
    };
    let cases = [
        ("v1,", "malformed_signature"),
        ("v1,@@@@", "malformed_signature"),
        ("v1,AAAA", "malformed_signature"),
        ("v2,AAAA v1a,BBBB", "no_v1_signature"),
        (" ", "no_v1_signature"),
        (&"v1,AAAA ".repeat(17), "too_many_signatures"),
    ];
    for (signature, reason) in cases {
        let error = verifier
            .verify(&headers(&with_signature(signature)), body, NOW)
            .unwrap_err();
        assert_eq!(error.reason(), reason, "{signature:?}");
    }
    // A well-formed entry among malformed ones still counts.
    let mixed = with_signature(&format!("v1, v1,AAAA v2,x {}", good.signature));
    assert!(verifier.verify(&headers(&mixed), body, NOW).is_ok());
    // The same header twice is refused, even when both are valid.
    let mut twice = headers(&good);
    twice.append(
        "webhook-signature",
        HeaderValue::from_str(&good.signature).unwrap(),
    );
    assert_eq!(
        verifier.verify(&twice, body, NOW),
        Err(VerifyError::DuplicateHeader("webhook-signature"))
    );
}

#[test]
fn timestamps_are_digits_only() {
    let secret = Signer::random_secret();
    let verifier = Verifier::new([secret.as_str()], 300).unwrap();
    let body = b"{}";
    for timestamp in [
        "-1780000000",
        "+1780000000",
        " 1780000000",
        "1780000000.5",
        "1e9",
        "99999999999999999999",
    ] {
        let mut map = headers(&Signer::new(&secret).sign_at("m", NOW, body));
        map.insert(
            "webhook-timestamp",
            HeaderValue::from_str(timestamp).unwrap(),
        );
        assert_eq!(
            verifier.verify(&map, body, NOW),
            Err(VerifyError::MalformedTimestamp),
            "{timestamp:?}"
        );
    }
}

#[test]
fn secrets_must_be_base64() {
    assert!(Verifier::new(["whsec_not base64!"], 300).is_err());
    assert!(Verifier::new(["whsec_"], 300).is_err());
    // The prefix is optional, as in Standard Webhooks.
    assert!(Verifier::new(["MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"], 300).is_ok());
}
