//! What a client asks for, checked before anything is stored: the body of
//! `POST /v1/orders/{order_id}/{captures|refunds|cancel|release-remaining-authorization}`.
//! Strict: unknown fields are refused, amounts are whole minor units from 1 to 2^53.

use ipp_schemas::{
    command::{check_amount, check_text, MAX_AMOUNT},
    CommandKind,
};
use serde_json::{Map, Value};
use uuid::Uuid;

/// A checked request for one command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandRequest {
    pub order_id: Uuid,
    pub kind: CommandKind,
    pub amount: Option<i64>,
    pub reference: Option<String>,
    pub description: Option<String>,
}

/// Why a request body was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// Not JSON, or not an object: 400.
    #[error("{0}")]
    Json(String),
    /// A field that is unknown, mistyped or out of range: 422.
    #[error("{0}")]
    Invalid(String),
}

impl CommandRequest {
    /// Reads a request body. An empty body is `{}` (a cancel, a release, or a capture of
    /// what remains).
    pub fn from_body(order_id: Uuid, kind: CommandKind, body: &[u8]) -> Result<Self, RequestError> {
        let fields = if body.iter().all(u8::is_ascii_whitespace) {
            Map::new()
        } else {
            match serde_json::from_slice::<Value>(body) {
                Ok(Value::Object(fields)) => fields,
                Ok(_) => return Err(RequestError::Json("the body must be a JSON object".into())),
                Err(e) => return Err(RequestError::Json(format!("the body is not JSON: {e}"))),
            }
        };
        Self::from_fields(order_id, kind, &fields).map_err(RequestError::Invalid)
    }

    fn from_fields(
        order_id: Uuid,
        kind: CommandKind,
        fields: &Map<String, Value>,
    ) -> Result<Self, String> {
        // `amount` is known to every kind: a cancel that names one is told it takes none.
        let allowed = ["amount", "reference", "description"];
        if let Some(unknown) = fields.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(format!(
                "unknown field `{unknown}` for a {kind} (expected: {})",
                allowed.join(", ")
            ));
        }
        let amount = fields.get("amount").map(amount).transpose()?;
        let text = |field: &str| -> Result<Option<String>, String> {
            match fields.get(field) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(text)) => Ok(Some(text.clone())),
                Some(_) => Err(format!("`{field}` must be a string")),
            }
        };
        Self::new(
            order_id,
            kind,
            amount,
            text("reference")?,
            text("description")?,
        )
    }

    /// A request from its fields, checked by the rules every command obeys.
    pub fn new(
        order_id: Uuid,
        kind: CommandKind,
        amount: Option<i64>,
        reference: Option<String>,
        description: Option<String>,
    ) -> Result<Self, String> {
        check_amount(kind, amount)?;
        for (field, text) in [("reference", &reference), ("description", &description)] {
            if let Some(text) = text {
                check_text(field, text)?;
            }
        }
        Ok(Self {
            order_id,
            kind,
            amount,
            reference,
            description,
        })
    }
}

/// An amount: a whole number of minor units, 1 to 2^53.
fn amount(value: &Value) -> Result<i64, String> {
    let Value::Number(number) = value else {
        return Err("`amount` must be a number of minor units".into());
    };
    if let Some(amount) = number.as_i64() {
        return Ok(amount);
    }
    if number.as_u64().is_some() {
        return Err(format!(
            "`amount` must be between 1 and {MAX_AMOUNT} minor units, not {number}"
        ));
    }
    Err(format!(
        "`amount` must be a whole number of minor units, not {number}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refund(body: &str) -> Result<CommandRequest, RequestError> {
        CommandRequest::from_body(Uuid::nil(), CommandKind::Refund, body.as_bytes())
    }

    #[test]
    fn a_refund_takes_an_amount_and_texts() {
        let request =
            refund(r#"{"amount": 500, "reference": "r-1", "description": "broken"}"#).unwrap();
        assert_eq!(request.amount, Some(500));
        assert_eq!(request.reference.as_deref(), Some("r-1"));
        assert_eq!(request.description.as_deref(), Some("broken"));
    }

    #[test]
    fn bad_amounts_are_refused_with_the_reason() {
        let cases = [
            ("{}", "needs an `amount`"),
            (r#"{"amount": 0}"#, "between 1 and"),
            (r#"{"amount": -5}"#, "between 1 and"),
            (r#"{"amount": 5.5}"#, "whole number"),
            (r#"{"amount": 5.0}"#, "whole number"),
            (r#"{"amount": 9007199254740993}"#, "between 1 and"),
            (r#"{"amount": 18446744073709551615}"#, "between 1 and"),
            (r#"{"amount": 1e400}"#, "not JSON"),
            (r#"{"amount": "500"}"#, "must be a number"),
            (
                r#"{"amount": 500, "currency": "EUR"}"#,
                "unknown field `currency`",
            ),
            (r#"{"amount": 500, "reference": 7}"#, "must be a string"),
        ];
        for (body, expected) in cases {
            let error = refund(body).unwrap_err().to_string();
            assert!(error.contains(expected), "{body}: {error}");
        }
        assert_eq!(
            refund(r#"{"amount": 9007199254740992}"#).unwrap().amount,
            Some(MAX_AMOUNT)
        );
    }

    #[test]
    fn a_cancel_takes_no_body_or_an_empty_object_but_no_amount() {
        for body in ["", "  ", "{}"] {
            let request =
                CommandRequest::from_body(Uuid::nil(), CommandKind::Cancel, body.as_bytes());
            assert_eq!(request.unwrap().amount, None, "{body:?}");
        }
        let error =
            CommandRequest::from_body(Uuid::nil(), CommandKind::Cancel, br#"{"amount": 1}"#)
                .unwrap_err();
        assert_eq!(
            error,
            RequestError::Invalid("a cancel takes no `amount`".into())
        );
        for body in ["[]", "7", "nope"] {
            let error =
                CommandRequest::from_body(Uuid::nil(), CommandKind::Cancel, body.as_bytes());
            assert!(matches!(error, Err(RequestError::Json(_))), "{body}");
        }
    }
}
