//! `X_FILE` variables: any secret setting `X` (one declared with `hide_env_values`) may
//! be given as a file holding it, `X_FILE=/run/secrets/x`, so that the secret itself is
//! neither in the environment an orchestrator shows nor in a process listing. The
//! file's content, less one trailing newline, is the value. [`parse`] reads the files
//! before clap parses, like [`crate::args::accept_renamed_env`], and takes the values
//! out of the process's environment again once parsed.

use std::{
    collections::BTreeSet,
    ffi::{OsStr, OsString},
    path::PathBuf,
};

use clap::{error::ErrorKind, Command, Parser};

/// The suffix of a variable naming a file that holds a secret setting.
pub const SUFFIX: &str = "_FILE";

/// Parses the command line like `P::parse()`, after loading the `X_FILE` variable of
/// every secret setting of `P` into `X`. A secret given both ways, or an unreadable
/// file, exits 2 with a message naming the variables or the file, never the value.
pub fn parse<P: Parser>() -> P {
    let mut command = P::command();
    let names = file_variables(&command);
    let loaded = match load(&names, |name| std::env::var_os(name)) {
        Ok(loaded) => loaded,
        Err(error) => command
            .error(ErrorKind::ArgumentConflict, error.to_string())
            .exit(),
    };
    for (name, value) in &loaded {
        std::env::set_var(name, value);
    }
    let parsed = P::parse();
    // Parsed into the config: nothing else (a child process, a crash report) needs them.
    for (name, _) in &loaded {
        std::env::remove_var(name);
    }
    parsed
}

/// The variables of `command` (and of its subcommands) that may be given as a file:
/// those of secret settings, declared with `hide_env_values`. A setting that declares
/// its own `X_FILE` (`KAFKA_PROPERTIES_FILE`, a properties file) is left to it.
pub fn file_variables(command: &Command) -> Vec<String> {
    let mut secret = BTreeSet::new();
    let mut declared = BTreeSet::new();
    collect(command, &mut secret, &mut declared);
    secret
        .into_iter()
        .filter(|name| !declared.contains(&format!("{name}{SUFFIX}")))
        .collect()
}

fn collect(command: &Command, secret: &mut BTreeSet<String>, declared: &mut BTreeSet<String>) {
    for arg in command.get_arguments() {
        if let Some(env) = arg.get_env().and_then(OsStr::to_str) {
            declared.insert(env.to_owned());
            if arg.is_hide_env_values_set() {
                secret.insert(env.to_owned());
            }
        }
    }
    for sub in command.get_subcommands() {
        collect(sub, secret, declared);
    }
}

/// Why the `X_FILE` variables could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum FileVariableError {
    #[error("{name} and {name}_FILE are both set: set only one of them")]
    Both { name: String },
    #[error("{name}_FILE: cannot read {}: {source}", path.display())]
    Unreadable {
        name: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{name}_FILE: {} is not UTF-8 text", path.display())]
    NotText { name: String, path: PathBuf },
}

/// For each of `names` whose `X_FILE` is set (in `env`), the value its file holds.
/// An empty variable counts as unset, as it does for clap.
pub fn load(
    names: &[String],
    env: impl Fn(&str) -> Option<OsString>,
) -> Result<Vec<(String, String)>, FileVariableError> {
    let set = |name: &str| env(name).filter(|value| !value.is_empty());
    let mut loaded = Vec::new();
    for name in names {
        let Some(path) = set(&format!("{name}{SUFFIX}")) else {
            continue;
        };
        if set(name).is_some() {
            return Err(FileVariableError::Both { name: name.clone() });
        }
        let path = PathBuf::from(path);
        let bytes = std::fs::read(&path).map_err(|source| FileVariableError::Unreadable {
            name: name.clone(),
            path: path.clone(),
            source,
        })?;
        let text = String::from_utf8(bytes).map_err(|_| FileVariableError::NotText {
            name: name.clone(),
            path: path.clone(),
        })?;
        loaded.push((name.clone(), trim_one_newline(text)));
    }
    Ok(loaded)
}

/// Drops one trailing `\n` (or `\r\n`), which editors and `echo` add; anything else in
/// the file is the value.
fn trim_one_newline(mut text: String) -> String {
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    text
}

/// The secret settings of `command` whose `--help` text does not mention their `X_FILE`:
/// for a unit test of each binary, so that no secret setting is left undocumented.
pub fn undocumented(command: &Command) -> Vec<String> {
    let names = file_variables(command);
    let mut missing = BTreeSet::new();
    let mut stack = vec![command];
    while let Some(command) = stack.pop() {
        for arg in command.get_arguments() {
            let Some(name) = arg.get_env().and_then(OsStr::to_str) else {
                continue;
            };
            let help = arg
                .get_long_help()
                .or(arg.get_help())
                .map(ToString::to_string)
                .unwrap_or_default();
            if names.iter().any(|n| n == name) && !help.contains(&format!("{name}{SUFFIX}")) {
                missing.insert(name.to_owned());
            }
        }
        stack.extend(command.get_subcommands());
    }
    missing.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use clap::CommandFactory;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        /// A key. Or KEY_FILE: a file holding it.
        #[arg(long, env = "KEY", hide_env_values = true)]
        key: Option<String>,
        /// Not secret.
        #[arg(long, env = "NAME")]
        name: Option<String>,
        /// Properties, with a file format of their own.
        #[arg(long, env = "PROPS", hide_env_values = true)]
        props: Option<String>,
        #[arg(long, env = "PROPS_FILE")]
        props_file: Option<String>,
    }

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name| map.get(name).map(OsString::from)
    }

    fn file(content: &str) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), content).unwrap();
        file
    }

    #[test]
    fn secret_settings_take_a_file_unless_they_declare_their_own() {
        assert_eq!(file_variables(&Cli::command()), vec!["KEY".to_owned()]);
    }

    #[test]
    fn the_file_holds_the_value_less_one_trailing_newline() {
        let names = vec!["KEY".to_owned()];
        for (content, value) in [
            ("s3cret\n", "s3cret"),
            ("s3cret", "s3cret"),
            ("s3cret\r\n", "s3cret"),
            ("s3cret\n\n", "s3cret\n"),
            (" a,b=c \n", " a,b=c "),
        ] {
            let f = file(content);
            let path = f.path().to_str().unwrap();
            let loaded = load(&names, env(&[("KEY_FILE", path)])).unwrap();
            assert_eq!(
                loaded,
                vec![("KEY".to_owned(), value.to_owned())],
                "{content:?}"
            );
        }
        assert!(load(&names, env(&[("KEY", "x")])).unwrap().is_empty());
        assert!(load(&names, env(&[("KEY_FILE", "")])).unwrap().is_empty());
    }

    #[test]
    fn both_set_names_both_never_the_value() {
        let f = file("from-file");
        let names = vec!["KEY".to_owned()];
        let path = f.path().to_str().unwrap();
        let error = load(&names, env(&[("KEY", "from-env"), ("KEY_FILE", path)])).unwrap_err();
        let message = error.to_string();
        assert!(
            message.contains("KEY and KEY_FILE are both set"),
            "{message}"
        );
        assert!(!message.contains("from-env") && !message.contains("from-file"));
        // An empty KEY (a compose file's `KEY: ${KEY:-}`) is no conflict.
        let loaded = load(&names, env(&[("KEY", ""), ("KEY_FILE", path)])).unwrap();
        assert_eq!(loaded[0].1, "from-file");
    }

    #[test]
    fn an_unreadable_file_is_named() {
        let names = vec!["KEY".to_owned()];
        let error = load(&names, env(&[("KEY_FILE", "/nonexistent/key")])).unwrap_err();
        let message = error.to_string();
        assert!(
            message.starts_with("KEY_FILE: cannot read /nonexistent/key: "),
            "{message}"
        );
        let binary = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(binary.path(), [0xff, 0xfe]).unwrap();
        let path = binary.path().to_str().unwrap();
        let error = load(&names, env(&[("KEY_FILE", path)])).unwrap_err();
        assert!(error.to_string().contains("is not UTF-8"), "{error}");
    }

    #[test]
    fn undocumented_file_variables_are_found() {
        assert!(undocumented(&Cli::command()).is_empty());
        #[derive(Debug, Parser)]
        struct Forgetful {
            /// A key.
            #[arg(long, env = "KEY", hide_env_values = true)]
            key: Option<String>,
        }
        assert_eq!(undocumented(&Forgetful::command()), vec!["KEY".to_owned()]);
    }
}
