//! `KAFKA_PROPERTIES_FILE`: librdkafka settings in a Java-style properties file, for
//! values that `KAFKA_PROPERTIES` cannot carry (a password with a comma) or that should
//! not sit in the environment. A deliberate subset of Java's format, so that a password
//! is written as it is: `key=value` per line (split at the first `=`, both sides
//! trimmed, the value may hold `=`, `,`, `#`, `:` and backslashes), `#` or `!` starting
//! a comment line, blank lines; no escapes, no line continuations. A key given twice
//! takes its last value, as in Java.

use std::path::PathBuf;

use crate::secret::KafkaProperty;

/// A properties file as read at start-up. `Debug` shows the path and the settings, with
/// the values of password and secret keys masked by [`KafkaProperty`]'s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaPropertiesFile {
    pub path: PathBuf,
    pub properties: Vec<KafkaProperty>,
}

/// Why a properties file cannot be used. A bad line is named by its number, never
/// shown: it may hold a password.
#[derive(Debug, thiserror::Error)]
pub enum PropertiesFileError {
    #[error("cannot read {}: {source}", path.display())]
    Unreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not UTF-8 text", path.display())]
    NotText { path: PathBuf },
    #[error("{} line {line}: not `key=value` (the line is not shown: it may hold a secret)", path.display())]
    NotKeyValue { path: PathBuf, line: usize },
}

impl KafkaPropertiesFile {
    /// Reads and parses the file at `path`.
    pub fn read(path: impl Into<PathBuf>) -> Result<Self, PropertiesFileError> {
        let path = path.into();
        let bytes = std::fs::read(&path).map_err(|source| PropertiesFileError::Unreadable {
            path: path.clone(),
            source,
        })?;
        let text = String::from_utf8(bytes)
            .map_err(|_| PropertiesFileError::NotText { path: path.clone() })?;
        let properties = parse(&text).map_err(|line| PropertiesFileError::NotKeyValue {
            path: path.clone(),
            line,
        })?;
        Ok(Self { path, properties })
    }

    /// The settings, in the file's order.
    pub fn pairs(&self) -> impl Iterator<Item = (&str, &str)> + Clone {
        self.properties.iter().filter_map(KafkaProperty::pair)
    }
}

/// The settings of a properties file's text, or the number (from 1) of its first line
/// that is neither a setting, a comment nor blank.
pub fn parse(text: &str) -> Result<Vec<KafkaProperty>, usize> {
    let mut properties = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with('!') {
            continue;
        }
        match line.split_once('=') {
            Some((key, value)) if !key.trim().is_empty() => {
                properties.push(KafkaProperty::new(key.trim(), value.trim()));
            }
            _ => return Err(index + 1),
        }
    }
    Ok(properties)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(text: &str) -> Vec<(String, String)> {
        parse(text)
            .unwrap()
            .iter()
            .filter_map(KafkaProperty::pair)
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    #[test]
    fn settings_comments_and_blank_lines() {
        let text = "# Confluent Cloud\n\
                    ! also a comment\n\
                    \n\
                    security.protocol=SASL_SSL\n\
                    \tsasl.username = ipp \r\n\
                    sasl.password=a,b=c#d:e\\f\n\
                    ssl.ca.location=\n";
        assert_eq!(
            pairs(text),
            [
                ("security.protocol", "SASL_SSL"),
                ("sasl.username", "ipp"),
                ("sasl.password", "a,b=c#d:e\\f"),
                ("ssl.ca.location", ""),
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
        );
        assert!(pairs("").is_empty());
    }

    #[test]
    fn a_line_that_is_not_a_setting_is_named_by_its_number() {
        assert_eq!(parse("a=1\n\nsasl.password hunter2\n"), Err(3));
        assert_eq!(parse("=value"), Err(1));
    }

    #[test]
    fn errors_name_the_file_and_line_never_the_content() {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), "acks=all\nsasl.password: hunter2\n").unwrap();
        let message = KafkaPropertiesFile::read(file.path())
            .unwrap_err()
            .to_string();
        assert!(
            message.contains(&format!("{} line 2", file.path().display())),
            "{message}"
        );
        assert!(!message.contains("hunter2"), "{message}");
        let message = KafkaPropertiesFile::read("/nonexistent.properties")
            .unwrap_err()
            .to_string();
        assert!(
            message.starts_with("cannot read /nonexistent.properties: "),
            "{message}"
        );
    }

    #[test]
    fn debug_masks_passwords() {
        let file = KafkaPropertiesFile {
            path: "/etc/ipp/kafka.properties".into(),
            properties: parse("sasl.password=hunter2\nsasl.username=ipp").unwrap(),
        };
        let debug = format!("{file:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(debug.contains("sasl.username=ipp") && debug.contains("kafka.properties"));
    }
}
