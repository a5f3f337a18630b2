//! The accounts file (`KUSTOM_ACCOUNTS_FILE`): the webhook secrets and the Order
//! Management API key of each Kustom account of the deployment, named by its
//! `merchant_id`, and the commands API tokens limited to some of them. ipp-ingest and
//! ipp-actions read the same file.
//!
//! ```toml
//! [accounts.DM11917000]
//! webhook_secrets = ["whsec_..."]   # several during a rotation
//! api_key = "kco_live_..."
//!
//! [api_tokens.store-42]
//! token = "..."
//! accounts = ["DM11917000"]
//! ```
//!
//! The file is read key by key rather than through serde, so that every error names
//! the file, the account (or token) and the field, and never quotes a value: a mistyped
//! secret must not end up in a log line. Unknown keys are refused (a misspelt
//! `webhook_secret` would otherwise leave an account without secrets).

use std::{
    collections::BTreeMap,
    fmt,
    path::{Path, PathBuf},
};

use toml::{Table, Value};

use crate::Secret;

/// One Kustom account: what ingest verifies its webhooks with, what ipp-actions calls
/// Order Management with. Either may be left out (a deployment whose ingest and
/// ipp-actions read different files), not both.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Account {
    pub webhook_secrets: Vec<Secret>,
    pub api_key: Option<Secret>,
}

/// A commands API token that may act only on the orders of `accounts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitedToken {
    pub token: Secret,
    pub accounts: Vec<String>,
}

/// The parsed file. Empty when no file is configured: then only the single-account
/// settings (`KUSTOM_WEBHOOK_SECRETS`, `KUSTOM_API_KEY`) apply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Accounts {
    accounts: BTreeMap<String, Account>,
    api_tokens: BTreeMap<String, LimitedToken>,
}

/// What is wrong with the accounts file. Never holds a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccountsError {
    #[error("cannot read the accounts file {path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error("the accounts file {path} is not valid TOML (line {line}, column {column})")]
    Syntax {
        path: PathBuf,
        line: usize,
        column: usize,
    },
    #[error("the accounts file {path}: {what}: {problem}")]
    Invalid {
        path: PathBuf,
        /// `account "DM1"`, `api token "pos"`, or `the file`.
        what: String,
        problem: String,
    },
}

impl Accounts {
    /// Reads and checks the file at `path`.
    pub fn load(path: &Path) -> Result<Self, AccountsError> {
        let text = std::fs::read_to_string(path).map_err(|e| AccountsError::Read {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        Self::parse(&text, path)
    }

    /// Reads the file `path` when one is configured, else no accounts.
    pub fn load_optional(path: Option<&Path>) -> Result<Self, AccountsError> {
        path.map_or(Ok(Self::default()), Self::load)
    }

    /// Parses the text of the file `path` (named in errors).
    pub fn parse(text: &str, path: &Path) -> Result<Self, AccountsError> {
        let table: Table = text.parse().map_err(|e: toml::de::Error| {
            // Only the position: the parser's message may quote the line, and with it a
            // secret.
            let offset = e.span().map_or(0, |span| span.start);
            let before = &text[..offset.min(text.len())];
            AccountsError::Syntax {
                path: path.to_owned(),
                line: before.matches('\n').count() + 1,
                column: before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1,
            }
        })?;
        let invalid = |what: &str, problem: String| AccountsError::Invalid {
            path: path.to_owned(),
            what: what.to_owned(),
            problem,
        };
        let mut parsed = Self::default();
        for (key, value) in &table {
            match key.as_str() {
                "accounts" => {
                    let accounts = as_table(value).ok_or_else(|| {
                        invalid("the file", "`accounts` must be a table of accounts".into())
                    })?;
                    for (merchant_id, value) in accounts {
                        let what = format!("account {merchant_id:?}");
                        let account = account(merchant_id, value).map_err(|p| invalid(&what, p))?;
                        parsed.accounts.insert(merchant_id.clone(), account);
                    }
                }
                "api_tokens" => {
                    let tokens = as_table(value).ok_or_else(|| {
                        invalid("the file", "`api_tokens` must be a table of tokens".into())
                    })?;
                    for (name, value) in tokens {
                        let what = format!("api token {name:?}");
                        let token = limited_token(name, value).map_err(|p| invalid(&what, p))?;
                        parsed.api_tokens.insert(name.clone(), token);
                    }
                }
                other => {
                    return Err(invalid(
                        "the file",
                        format!("unknown table `{other}` (expected `accounts`, `api_tokens`)"),
                    ))
                }
            }
        }
        for (name, token) in &parsed.api_tokens {
            if let Some(unknown) = token
                .accounts
                .iter()
                .find(|a| !parsed.accounts.contains_key(*a))
            {
                return Err(invalid(
                    &format!("api token {name:?}"),
                    format!("names account {unknown:?}, which is not in [accounts]"),
                ));
            }
        }
        Ok(parsed)
    }

    pub fn is_empty(&self) -> bool {
        self.accounts.is_empty() && self.api_tokens.is_empty()
    }

    /// The account named `merchant_id`, if the file has it.
    pub fn get(&self, merchant_id: &str) -> Option<&Account> {
        self.accounts.get(merchant_id)
    }

    /// Every account, by merchant id.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Account)> {
        self.accounts.iter().map(|(id, a)| (id.as_str(), a))
    }

    /// The limited commands API tokens, by name.
    pub fn api_tokens(&self) -> impl Iterator<Item = (&str, &LimitedToken)> {
        self.api_tokens.iter().map(|(name, t)| (name.as_str(), t))
    }
}

impl fmt::Display for Accounts {
    /// The merchant ids, for a start-up log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids: Vec<&str> = self.accounts.keys().map(String::as_str).collect();
        f.write_str(&ids.join(","))
    }
}

fn as_table(value: &Value) -> Option<&Table> {
    match value {
        Value::Table(table) => Some(table),
        _ => None,
    }
}

/// A value's type, for an error that must not show the value.
fn type_of(value: &Value) -> &'static str {
    match value {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a float",
        Value::Boolean(_) => "a boolean",
        Value::Datetime(_) => "a date",
        Value::Array(_) => "an array",
        Value::Table(_) => "a table",
    }
}

fn non_empty_string(field: &str, value: &Value) -> Result<String, String> {
    match value {
        Value::String(s) if !s.trim().is_empty() => Ok(s.trim().to_owned()),
        Value::String(_) => Err(format!("`{field}` is empty")),
        other => Err(format!(
            "`{field}` must be a string, not {}",
            type_of(other)
        )),
    }
}

fn strings(field: &str, value: &Value) -> Result<Vec<String>, String> {
    let Value::Array(items) = value else {
        return Err(format!(
            "`{field}` must be an array of strings, not {}",
            type_of(value)
        ));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| non_empty_string(&format!("{field}[{i}]"), item))
        .collect()
}

fn account(merchant_id: &str, value: &Value) -> Result<Account, String> {
    if merchant_id.trim().is_empty() {
        return Err("a merchant id must not be empty".into());
    }
    let fields = as_table(value).ok_or_else(|| {
        format!(
            "must be a table (`[accounts.{merchant_id}]`), not {}",
            type_of(value)
        )
    })?;
    let mut account = Account::default();
    for (field, value) in fields {
        match field.as_str() {
            "webhook_secrets" => {
                let secrets = strings(field, value)?;
                if secrets.is_empty() {
                    return Err("`webhook_secrets` is empty: leave it out instead".into());
                }
                account.webhook_secrets = secrets.into_iter().map(Secret::new).collect();
            }
            "api_key" => account.api_key = Some(Secret::new(non_empty_string(field, value)?)),
            other => {
                return Err(format!(
                    "unknown field `{other}` (expected `webhook_secrets`, `api_key`)"
                ))
            }
        }
    }
    if account.webhook_secrets.is_empty() && account.api_key.is_none() {
        return Err("has neither `webhook_secrets` nor `api_key`".into());
    }
    Ok(account)
}

fn limited_token(name: &str, value: &Value) -> Result<LimitedToken, String> {
    if name.trim().is_empty() || name.contains(':') || name.contains(',') {
        return Err("a token name must be non-empty, without `:` or `,`".into());
    }
    let fields = as_table(value).ok_or_else(|| {
        format!(
            "must be a table (`[api_tokens.{name}]`), not {}",
            type_of(value)
        )
    })?;
    let (mut token, mut accounts) = (None, None);
    for (field, value) in fields {
        match field.as_str() {
            "token" => token = Some(Secret::new(non_empty_string(field, value)?)),
            "accounts" => accounts = Some(strings(field, value)?),
            other => {
                return Err(format!(
                    "unknown field `{other}` (expected `token`, `accounts`)"
                ))
            }
        }
    }
    let token = token.ok_or("has no `token`")?;
    let accounts = accounts
        .filter(|a| !a.is_empty())
        .ok_or("has no `accounts`: list the accounts it may act on")?;
    Ok(LimitedToken { token, accounts })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "/etc/ipp/accounts.toml";

    fn parse(text: &str) -> Result<Accounts, AccountsError> {
        Accounts::parse(text, Path::new(FILE))
    }

    fn error(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn accounts_and_limited_tokens() {
        let accounts = parse(
            r#"
            [accounts.DM1]
            webhook_secrets = ["whsec_a", "whsec_b"]
            api_key = "kco_1"
            [accounts.DM2]
            api_key = "kco_2"
            [api_tokens.store-1]
            token = "tok"
            accounts = ["DM1"]
            "#,
        )
        .unwrap();
        let dm1 = accounts.get("DM1").unwrap();
        let secrets: Vec<&str> = dm1.webhook_secrets.iter().map(Secret::expose).collect();
        assert_eq!(secrets, ["whsec_a", "whsec_b"]);
        assert_eq!(dm1.api_key.as_ref().map(Secret::expose), Some("kco_1"));
        assert!(accounts.get("DM2").unwrap().webhook_secrets.is_empty());
        assert_eq!(accounts.get("DM3"), None);
        let tokens: Vec<_> = accounts.api_tokens().collect();
        assert_eq!(tokens.len(), 1);
        assert_eq!(tokens[0].0, "store-1");
        assert_eq!(tokens[0].1.accounts, ["DM1"]);
        assert_eq!(accounts.to_string(), "DM1,DM2");
        assert!(parse("").unwrap().is_empty());
    }

    #[test]
    fn errors_name_the_file_the_account_and_the_field_never_the_secret() {
        let cases = [
            (
                "[accounts.DM1]\nwebhook_secrets = \"whsec_SECRET\"\n",
                "account \"DM1\": `webhook_secrets` must be an array of strings, not a string",
            ),
            (
                "[accounts.DM1]\nwebhook_secret = [\"whsec_SECRET\"]\n",
                "account \"DM1\": unknown field `webhook_secret`",
            ),
            (
                "[accounts.DM1]\napi_key = \"  \"\n",
                "account \"DM1\": `api_key` is empty",
            ),
            (
                "[accounts.DM1]\nwebhook_secrets = [\"whsec_SECRET\", 7]\n",
                "account \"DM1\": `webhook_secrets[1]` must be a string, not an integer",
            ),
            ("[accounts.DM1]\n", "account \"DM1\": has neither"),
            ("accounts = 3\n", "`accounts` must be a table"),
            (
                "[api_tokens.pos]\ntoken = \"SECRET\"\naccounts = [\"DM9\"]\n",
                "api token \"pos\": names account \"DM9\", which is not in [accounts]",
            ),
            (
                "[api_tokens.pos]\ntoken = \"SECRET\"\n",
                "api token \"pos\": has no `accounts`",
            ),
            ("[kustom]\nx = 1\n", "unknown table `kustom`"),
        ];
        for (text, expected) in cases {
            let message = error(text);
            assert!(
                message.starts_with(&format!("the accounts file {FILE}: ")),
                "{message}"
            );
            assert!(message.contains(expected), "{message:?} lacks {expected:?}");
            assert!(!message.contains("SECRET"), "{message:?} shows a secret");
        }
    }

    #[test]
    fn a_syntax_error_shows_its_position_not_the_line() {
        let message = error("[accounts.DM1]\napi_key = kco_SECRET\n");
        assert!(message.contains(FILE), "{message}");
        assert!(message.contains("line 2"), "{message}");
        assert!(!message.contains("SECRET"), "{message:?} shows a secret");
    }

    #[test]
    fn debug_masks_every_secret() {
        let accounts = parse(
            "[accounts.DM1]\nwebhook_secrets = [\"whsec_SECRET\"]\napi_key = \"kco_SECRET\"\n\
             [api_tokens.pos]\ntoken = \"tok_SECRET\"\naccounts = [\"DM1\"]\n",
        )
        .unwrap();
        let debug = format!("{accounts:?}");
        assert!(debug.contains("DM1"), "{debug}");
        assert!(!debug.contains("SECRET"), "{debug}");
    }

    #[test]
    fn a_missing_file_is_named() {
        let missing = Path::new("/nonexistent/accounts.toml");
        let message = Accounts::load(missing).unwrap_err().to_string();
        assert!(message.contains("/nonexistent/accounts.toml"), "{message}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("accounts.toml");
        std::fs::write(&path, "[accounts.DM1]\napi_key = \"k\"\n").unwrap();
        assert!(Accounts::load_optional(Some(&path))
            .unwrap()
            .get("DM1")
            .is_some());
        assert!(Accounts::load_optional(None).unwrap().is_empty());
    }
}
