//! The commands API's bearer tokens: `NAME:TOKEN` (or `TOKEN`, named `default`), several
//! at once for rotation. A token is compared by its SHA-256 digest in constant time, so
//! neither its content nor its length shows in the timing; it is never logged.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use ipp_service::Secret;

/// The name of a token configured without one.
pub const DEFAULT_NAME: &str = "default";

pub struct Tokens(Vec<Token>);

struct Token {
    name: String,
    digest: [u8; 32],
}

impl Tokens {
    pub fn new(configured: &[Secret]) -> Result<Self, String> {
        let tokens = configured
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
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self(tokens))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The name of the token an `Authorization` header carries, if it is one of ours.
    /// Every configured token is compared, whichever matches.
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<&str, &'static str> {
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
                found = Some(configured.name.as_str());
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

    fn tokens(entries: &[&str]) -> Tokens {
        Tokens::new(&entries.iter().map(|e| Secret::new(*e)).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn named_and_unnamed_tokens_authenticate_by_name() {
        let tokens = tokens(&["backoffice:tok-old", "backoffice: tok-new", "tok-pos"]);
        assert_eq!(
            tokens.authenticate(Some("Bearer tok-old")),
            Ok("backoffice")
        );
        assert_eq!(
            tokens.authenticate(Some("bearer tok-new")),
            Ok("backoffice")
        );
        assert_eq!(
            tokens.authenticate(Some("Bearer tok-pos")),
            Ok(DEFAULT_NAME)
        );
        assert!(tokens.authenticate(Some("Bearer tok")).is_err());
        assert!(tokens.authenticate(Some("Basic tok-pos")).is_err());
        assert!(tokens.authenticate(Some("tok-pos")).is_err());
        assert!(tokens.authenticate(None).is_err());
    }

    #[test]
    fn empty_parts_are_refused() {
        for entry in [":tok", "name:"] {
            assert!(Tokens::new(&[Secret::new(entry)]).is_err(), "{entry}");
        }
    }
}
