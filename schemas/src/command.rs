//! Money commands: what a merchant asks ipp-actions to do to an order (capture, refund,
//! cancel, release the remaining authorization). A command is a record of the commands
//! topic (`ipp.commands`), keyed by its order id so that an order's commands keep their
//! order; its value is the JSON of [`Command`]. The log is the command's durable form:
//! ipp-actions records it in its ledger and executes it from there.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The largest amount a command may carry: 2^53, the largest integer every JSON reader
/// holds exactly.
pub const MAX_AMOUNT: i64 = 1 << 53;

/// The longest `reference` and `description` Order Management takes.
pub const MAX_TEXT_CHARS: usize = 255;

/// Namespace of command ids derived from an idempotency key: `command_id =
/// UUIDv5(COMMAND_NAMESPACE, "{scope}:{idempotency_key}")` (UUIDv5 of the URL
/// `https://github.com/ipp-pipeline/ipp-pipeline/commands`).
pub const COMMAND_NAMESPACE: Uuid = Uuid::from_u128(0xe8ebf051_c561_531c_a91b_01ac82c5e273);

/// What a command does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandKind {
    /// Capture `amount`, or what remains authorized when it is absent.
    Capture,
    /// Refund `amount` of what was captured.
    Refund,
    /// Cancel the whole order (only without captures).
    Cancel,
    /// Release what remains authorized: no further captures.
    ReleaseRemainingAuthorization,
}

impl CommandKind {
    pub const ALL: [Self; 4] = [
        Self::Capture,
        Self::Refund,
        Self::Cancel,
        Self::ReleaseRemainingAuthorization,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Capture => "capture",
            Self::Refund => "refund",
            Self::Cancel => "cancel",
            Self::ReleaseRemainingAuthorization => "release_remaining_authorization",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == value)
    }

    /// Whether the command must name an amount (`Some(true)`), may (`Some(false)`) or must
    /// not (`None`).
    pub const fn amount_required(self) -> Option<bool> {
        match self {
            Self::Refund => Some(true),
            Self::Capture => Some(false),
            Self::Cancel | Self::ReleaseRemainingAuthorization => None,
        }
    }
}

impl std::fmt::Display for CommandKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One command, as the log holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    pub command_id: Uuid,
    pub order_id: Uuid,
    #[serde(rename = "type")]
    pub kind: CommandKind,
    /// Minor units; see [`CommandKind::amount_required`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Who issued it: the name of the API token, or `cli`.
    pub issued_by: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    pub issued_at: DateTime<Utc>,
}

/// Why a command record cannot be executed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("not a command: {0}")]
    Json(String),
    #[error("{0}")]
    Invalid(String),
}

impl Command {
    /// Reads a command record leniently (unknown fields are ignored) and checks the rules
    /// of [`Command::check`].
    pub fn parse(value: &[u8]) -> Result<Self, CommandError> {
        let command: Self =
            serde_json::from_slice(value).map_err(|e| CommandError::Json(e.to_string()))?;
        command.check().map_err(CommandError::Invalid)?;
        Ok(command)
    }

    /// The rules every command obeys, wherever it came from.
    pub fn check(&self) -> Result<(), String> {
        check_amount(self.kind, self.amount)?;
        for (field, text) in [
            ("reference", &self.reference),
            ("description", &self.description),
        ] {
            if let Some(text) = text {
                check_text(field, text)?;
            }
        }
        Ok(())
    }

    /// The command's JSON, as it goes into the log.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a command serializes")
    }
}

/// The amount rules of a kind: a refund needs one, a capture may have one, a cancel or a
/// release has none; an amount is 1 to [`MAX_AMOUNT`] minor units.
pub fn check_amount(kind: CommandKind, amount: Option<i64>) -> Result<(), String> {
    match (kind.amount_required(), amount) {
        (Some(true), None) => Err(format!("a {kind} needs an `amount`")),
        (None, Some(_)) => Err(format!("a {kind} takes no `amount`")),
        (_, Some(amount)) if !(1..=MAX_AMOUNT).contains(&amount) => Err(format!(
            "`amount` must be between 1 and {MAX_AMOUNT} minor units, not {amount}"
        )),
        _ => Ok(()),
    }
}

/// `reference` and `description`: at most [`MAX_TEXT_CHARS`] characters, no control
/// characters.
pub fn check_text(field: &str, text: &str) -> Result<(), String> {
    if text.chars().count() > MAX_TEXT_CHARS {
        return Err(format!(
            "`{field}` is longer than {MAX_TEXT_CHARS} characters"
        ));
    }
    if text.chars().any(char::is_control) {
        return Err(format!("`{field}` contains a control character"));
    }
    Ok(())
}

/// The command id an idempotency key stands for within `scope` (an API token's name):
/// the same key always names the same command.
pub fn command_id_for_key(scope: &str, idempotency_key: &str) -> Uuid {
    Uuid::new_v5(
        &COMMAND_NAMESPACE,
        format!("{scope}:{idempotency_key}").as_bytes(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command(kind: CommandKind, amount: Option<i64>) -> Command {
        Command {
            command_id: Uuid::new_v4(),
            order_id: Uuid::new_v4(),
            kind,
            amount,
            reference: Some("r-1".into()),
            description: None,
            issued_by: "backoffice".into(),
            idempotency_key: Some("k".into()),
            issued_at: Utc::now(),
        }
    }

    #[test]
    fn namespace_is_the_documented_url_uuid() {
        let expected = Uuid::new_v5(
            &Uuid::NAMESPACE_URL,
            b"https://github.com/ipp-pipeline/ipp-pipeline/commands",
        );
        assert_eq!(COMMAND_NAMESPACE, expected);
    }

    #[test]
    fn a_command_round_trips_and_unknown_fields_are_ignored() {
        let original = command(CommandKind::Refund, Some(500));
        let mut value: serde_json::Value = serde_json::from_str(&original.to_json()).unwrap();
        assert_eq!(value["type"], "refund");
        value["added_later"] = serde_json::json!(true);
        let parsed = Command::parse(value.to_string().as_bytes()).unwrap();
        assert_eq!(parsed, original);
    }

    #[test]
    fn amounts_follow_the_kind() {
        use CommandKind::*;
        let ok = [
            (Capture, None),
            (Capture, Some(1)),
            (Refund, Some(MAX_AMOUNT)),
            (Cancel, None),
            (ReleaseRemainingAuthorization, None),
        ];
        for (kind, amount) in ok {
            assert_eq!(command(kind, amount).check(), Ok(()), "{kind} {amount:?}");
        }
        let refused = [
            (Refund, None),
            (Refund, Some(0)),
            (Capture, Some(-1)),
            (Capture, Some(MAX_AMOUNT + 1)),
            (Cancel, Some(5)),
            (ReleaseRemainingAuthorization, Some(5)),
        ];
        for (kind, amount) in refused {
            assert!(command(kind, amount).check().is_err(), "{kind} {amount:?}");
        }
    }

    #[test]
    fn keys_name_one_command_per_scope() {
        assert_eq!(command_id_for_key("a", "k1"), command_id_for_key("a", "k1"));
        assert_ne!(command_id_for_key("a", "k1"), command_id_for_key("b", "k1"));
        assert_ne!(command_id_for_key("a", "k1"), command_id_for_key("a", "k2"));
    }

    #[test]
    fn kinds_parse_from_their_names() {
        for kind in CommandKind::ALL {
            assert_eq!(CommandKind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(CommandKind::parse("void"), None);
    }
}
