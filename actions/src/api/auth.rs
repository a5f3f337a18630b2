//! The commands API's bearer tokens: `NAME:TOKEN` (or `TOKEN`, named `default`), several
//! at once for rotation, each allowed every account; and the accounts file's
//! `[api_tokens.NAME]`, each limited to the accounts it lists. A token is compared by its
//! SHA-256 digest in constant time, so neither its content nor its length shows in the
//! timing; it is never logged.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use ipp_service::{Accounts, Secret};

/// The name of a token configured without one.
pub const DEFAULT_NAME: &str = "default";

pub struct Tokens(Vec<Token>);

struct Token {
    name: String,
    digest: [u8; 32],
    /// `None`: every account.
    accounts: Option<Vec<String>>,
}

/// Who sent a request: its token's name (the scope of its Idempotency-Keys) and the
/// accounts it may act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller<'a> {
    pub name: &'a str,
    accounts: Option<&'a [String]>,
}

impl Caller<'_> {
    /// Whether this caller may see and command an order of account `merchant_id`
    /// (`None`: its account is not known yet, which only an unlimited token may act on).
    pub fn permits(&self, merchant_id: Option<&str>) -> bool {
        match (self.accounts, merchant_id) {
            (None, _) => true,
            (Some(accounts), Some(id)) => accounts.iter().any(|a| a == id),
            (Some(_), None) => false,
        }
    }

    pub fn is_limited(&self) -> bool {
        self.accounts.is_some()
    }
}

impl Tokens {
    /// `configured` (ACTIONS_API_TOKENS) and the accounts file's limited tokens. A name
    /// may not be in both: its Idempotency-Keys would be shared by tokens of different
    /// rights.
    pub fn new(configured: &[Secret], accounts: &Accounts) -> Result<Self, String> {
        let mut tokens: Vec<Token> = configured
            .iter()
            .map(|secret| {
                let entry = secret.expose();
                // Trimmed like the token a client sends, so `name: token` matches.
                let (name, token) = match entry.split_once(':') {
                    Some((name, token)) => (name.trim(), token.trim()),
                    None => (DEFAULT_NAME, entry),
                };
                if name.is_empty() || token.is_empty() {
                    return Err(
                        "an API token is `NAME:TOKEN` or `TOKEN`, neither part empty".to_owned(),
                    );
                }
                Ok(Token {
                    name: name.to_owned(),
                    digest: digest(token),
                    accounts: None,
                })
            })
            .collect::<Result<_, _>>()?;
        for (name, limited) in accounts.api_tokens() {
            if tokens.iter().any(|t| t.name == name) {
                return Err(format!(
                    "the API token name {name:?} is both in ACTIONS_API_TOKENS and in the \
                     accounts file: give the limited token another name"
                ));
            }
            tokens.push(Token {
                name: name.to_owned(),
                digest: digest(limited.token.expose()),
                accounts: Some(limited.accounts.clone()),
            });
        }
        Ok(Self(tokens))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The caller whose token an `Authorization` header carries, if it is one of ours.
    /// Every configured token is compared, whichever matches.
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<Caller<'_>, &'static str> {
        let header = authorization.ok_or("missing Authorization header (Bearer token)")?;
        let (scheme, token) = header
            .split_once(' ')
            .ok_or("the Authorization header is not `Bearer <token>`")?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err("the Authorization header is not `Bearer <token>`");
        }
        let given = digest(token.trim());
        let mut found = None;
        for configured in &self.0 {
            if bool::from(configured.digest.ct_eq(&given)) && found.is_none() {
                found = Some(Caller {
                    name: configured.name.as_str(),
                    accounts: configured.accounts.as_deref(),
                });
            }
        }
        found.ok_or("unknown bearer token")
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets(entries: &[&str]) -> Vec<Secret> {
        entries.iter().map(|e| Secret::new(*e)).collect()
    }

    fn tokens(entries: &[&str]) -> Tokens {
        Tokens::new(&secrets(entries), &Accounts::default()).unwrap()
    }

    fn name<'a>(caller: Result<Caller<'a>, &'static str>) -> Result<&'a str, &'static str> {
        caller.map(|c| c.name)
    }

    #[test]
    fn named_and_unnamed_tokens_authenticate_by_name() {
        let tokens = tokens(&["backoffice:tok-old", "backoffice: tok-new", "tok-pos"]);
        assert_eq!(
            name(tokens.authenticate(Some("Bearer tok-old"))),
            Ok("backoffice")
        );
        assert_eq!(
            name(tokens.authenticate(Some("bearer tok-new"))),
            Ok("backoffice")
        );
        assert_eq!(
            name(tokens.authenticate(Some("Bearer tok-pos"))),
            Ok(DEFAULT_NAME)
        );
        let caller = tokens.authenticate(Some("Bearer tok-pos")).unwrap();
        assert!(!caller.is_limited());
        assert!(caller.permits(Some("DM1")) && caller.permits(None));
        assert!(tokens.authenticate(Some("Bearer tok")).is_err());
        assert!(tokens.authenticate(Some("Basic tok-pos")).is_err());
        assert!(tokens.authenticate(Some("tok-pos")).is_err());
        assert!(tokens.authenticate(None).is_err());
    }

    #[test]
    fn empty_parts_are_refused() {
        for entry in [":tok", "name:"] {
            assert!(
                Tokens::new(&[Secret::new(entry)], &Accounts::default()).is_err(),
                "{entry}"
            );
        }
    }

    fn accounts_file(text: &str) -> Accounts {
        Accounts::parse(text, std::path::Path::new("accounts.toml")).unwrap()
    }

    #[test]
    fn limited_tokens_permit_only_their_accounts_known_orders() {
        let accounts = accounts_file(
            "[accounts.DM1]\napi_key = \"k1\"\n[accounts.DM2]\napi_key = \"k2\"\n\
             [api_tokens.store-1]\ntoken = \"tok-store\"\naccounts = [\"DM1\"]\n",
        );
        let tokens = Tokens::new(&secrets(&["backoffice:tok-all"]), &accounts).unwrap();
        let store = tokens.authenticate(Some("Bearer tok-store")).unwrap();
        assert_eq!(store.name, "store-1");
        assert!(store.is_limited());
        assert!(store.permits(Some("DM1")));
        assert!(!store.permits(Some("DM2")));
        assert!(!store.permits(None), "an order of no known account");
        let all = tokens.authenticate(Some("Bearer tok-all")).unwrap();
        assert!(all.permits(Some("DM2")) && all.permits(None));
    }

    #[test]
    fn a_name_may_not_be_both_limited_and_unlimited() {
        let accounts = accounts_file(
            "[accounts.DM1]\napi_key = \"k1\"\n\
             [api_tokens.backoffice]\ntoken = \"tok-2\"\naccounts = [\"DM1\"]\n",
        );
        let error = Tokens::new(&secrets(&["backoffice:tok-1"]), &accounts)
            .err()
            .unwrap();
        assert!(error.contains("\"backoffice\""), "{error}");
        assert!(!error.contains("tok-"), "{error}");
    }
}
