//! Values that must never reach a log line or `--help`: their `Debug` masks them, and
//! the settings that hold them are declared with `hide_env_values`.

use std::{convert::Infallible, fmt, str::FromStr};

/// A secret string (an API key, a webhook signing secret). `Debug` prints `Secret(***)`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// A `value_parser` for settings where an empty value is a mistake (a signing secret
    /// list with a stray comma), not "none".
    pub fn non_empty(value: &str) -> Result<Self, String> {
        let value = value.trim();
        if value.is_empty() {
            return Err("empty secret".into());
        }
        Ok(Self(value.to_owned()))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl FromStr for Secret {
    type Err = Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

/// A database URL. `Debug` keeps everything but the password, which is what one needs
/// to tell which database a service talks to.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl FromStr for DatabaseUrl {
    type Err = Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&mask_database_url(&self.0))
    }
}

/// `scheme://user:password@host/db?password=x` -> `scheme://user:***@host/db?password=***`.
fn mask_database_url(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let mut masked = match (base.find("://"), base.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &base[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or_default();
            let password = if userinfo.contains(':') { ":***" } else { "" };
            format!("{}{user}{password}{}", &base[..scheme + 3], &base[at..])
        }
        _ => base.to_owned(),
    };
    if let Some(query) = query {
        let parameters: Vec<String> = query
            .split('&')
            .map(|parameter| match parameter.split_once('=') {
                Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=***"),
                _ => parameter.to_owned(),
            })
            .collect();
        masked.push('?');
        masked.push_str(&parameters.join("&"));
    }
    masked
}

/// One `key=value` librdkafka setting. An empty item (`KAFKA_PROPERTIES=` or a trailing
/// comma) is allowed and means nothing. `Debug` masks the value of any key naming a
/// password or a secret (`sasl.password`, `ssl.key.password`, ...): see
/// [`is_secret_kafka_key`].
#[derive(Clone, PartialEq, Eq)]
pub struct KafkaProperty(Option<(String, String)>);

impl KafkaProperty {
    pub fn new(key: impl Into<String>, value: impl Into<String>) -> Self {
        Self(Some((key.into(), value.into())))
    }

    pub fn pair(&self) -> Option<(&str, &str)> {
        self.0.as_ref().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// A `value_parser` whose error never repeats the text (clap's own would print
    /// `invalid value 'sasl.password:hunter2'`).
    pub fn parser() -> KafkaPropertyParser {
        KafkaPropertyParser
    }
}

/// Whether a librdkafka setting holds a secret: a password, a client secret, a private
/// key in PEM, the OAUTHBEARER configuration.
pub fn is_secret_kafka_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    ["password", "secret", "key.pem", "oauthbearer.config"]
        .iter()
        .any(|part| key.contains(part))
}

/// See [`KafkaProperty::parser`].
#[derive(Clone, Copy, Debug)]
pub struct KafkaPropertyParser;

impl clap::builder::TypedValueParser for KafkaPropertyParser {
    type Value = KafkaProperty;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<Self::Value, clap::Error> {
        let name = arg
            .map(|a| a.to_string())
            .unwrap_or_else(|| "--kafka-property".into());
        let invalid = || {
            clap::Error::raw(
                clap::error::ErrorKind::InvalidValue,
                format!(
                    "an item of {name} (or KAFKA_PROPERTIES) is not KEY=VALUE \
                     (the item is not shown: it may hold a secret)\n"
                ),
            )
            .with_cmd(cmd)
        };
        value
            .to_str()
            .ok_or_else(invalid)?
            .parse()
            .map_err(|_| invalid())
    }
}

impl fmt::Debug for KafkaProperty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            None => f.write_str("(none)"),
            Some((key, _)) if is_secret_kafka_key(key) => {
                write!(f, "{key}=***")
            }
            Some((key, value)) => write!(f, "{key}={value}"),
        }
    }
}

impl FromStr for KafkaProperty {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.trim().is_empty() {
            return Ok(Self(None));
        }
        match s.split_once('=') {
            Some((key, value)) if !key.trim().is_empty() => {
                Ok(Self(Some((key.trim().to_owned(), value.trim().to_owned()))))
            }
            _ => Err(format!("`{s}` is not KEY=VALUE")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_database_password() {
        let url: DatabaseUrl = "postgres://app:s3cret@db:5432/ipp".parse().unwrap();
        assert_eq!(format!("{url:?}"), "postgres://app:***@db:5432/ipp");
        let url: DatabaseUrl = "postgres://app@db/ipp".parse().unwrap();
        assert_eq!(format!("{url:?}"), "postgres://app@db/ipp");
        let url: DatabaseUrl = "postgres://app@db/ipp?sslmode=require&password=s3cret"
            .parse()
            .unwrap();
        assert_eq!(
            format!("{url:?}"),
            "postgres://app@db/ipp?sslmode=require&password=***"
        );
        let url: DatabaseUrl = "postgres://app:p@ss@db/ipp".parse().unwrap();
        assert_eq!(format!("{url:?}"), "postgres://app:***@db/ipp");
    }

    #[test]
    fn debug_hides_secrets_and_kafka_passwords() {
        assert_eq!(format!("{:?}", Secret::new("kco_abc")), "Secret(***)");
        let property: KafkaProperty = "sasl.password=hunter2".parse().unwrap();
        assert_eq!(format!("{property:?}"), "sasl.password=***");
        let property: KafkaProperty = "security.protocol=SASL_SSL".parse().unwrap();
        assert_eq!(format!("{property:?}"), "security.protocol=SASL_SSL");
        for key in [
            "ssl.key.password",
            "sasl.oauthbearer.client.secret",
            "ssl.key.pem",
            "SASL.PASSWORD",
        ] {
            let property = KafkaProperty::new(key, "hunter2");
            assert_eq!(format!("{property:?}"), format!("{key}=***"));
        }
    }

    #[test]
    fn kafka_properties_parse_trimmed_and_empty_means_none() {
        let property: KafkaProperty = " acks = all ".parse().unwrap();
        assert_eq!(property.pair(), Some(("acks", "all")));
        assert_eq!("".parse::<KafkaProperty>().unwrap().pair(), None);
        assert!("novalue".parse::<KafkaProperty>().is_err());
        assert!("=x".parse::<KafkaProperty>().is_err());
    }

    #[test]
    fn non_empty_secrets_refuse_blanks() {
        assert!(Secret::non_empty("  ").is_err());
        assert_eq!(Secret::non_empty(" whsec_x ").unwrap().expose(), "whsec_x");
    }
}
