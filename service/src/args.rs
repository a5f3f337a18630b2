//! The settings every service shares, defined once and flattened into each service's
//! `Config` with `#[command(flatten)]`: the same flag, environment variable, default
//! and `--help` text everywhere. All of them are `global`, so an operator subcommand
//! (`ipp-projector status --kafka-brokers …`) takes them after its name too. Each has an
//! explicit id, so that no service argument of the same field name (`format`, `url`)
//! collides with it.

use std::{fmt, marker::PhantomData, net::SocketAddr};

use clap::{Arg, ArgMatches, Command};
use tokio::net::TcpListener;

use crate::{
    properties_file::KafkaPropertiesFile,
    secret::{DatabaseUrl, KafkaProperty},
    LogFormat,
};

/// Where the brokers are and how to talk to them.
#[derive(Debug, Clone, clap::Args)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers, comma-separated.
    #[arg(
        id = "kafka_brokers",
        value_name = "BROKERS",
        long = "kafka-brokers",
        env = "KAFKA_BROKERS",
        default_value = "127.0.0.1:9092",
        global = true
    )]
    pub brokers: String,

    /// Extra librdkafka property for every Kafka client of the service, as KEY=VALUE
    /// (TLS, SASL for a managed Kafka, ...). Repeat the flag, or separate pairs with
    /// commas in the environment variable. For the same key, this wins over
    /// KAFKA_PROPERTIES_FILE. Values of keys naming a password or a secret are never
    /// logged.
    #[arg(
        id = "kafka_properties",
        long = "kafka-property",
        env = "KAFKA_PROPERTIES",
        value_name = "KEY=VALUE",
        value_delimiter = ',',
        value_parser = KafkaProperty::parser(),
        hide_env_values = true,
        global = true
    )]
    pub properties: Vec<KafkaProperty>,

    /// A properties file of librdkafka settings for every Kafka client of the service
    /// (SASL credentials, TLS): `key=value` per line, split at the first `=`, so values
    /// may hold `,` and `=`; lines starting with `#` or `!` are comments; no escapes.
    /// Read at start-up. KAFKA_PROPERTIES / --kafka-property win over it for the same
    /// key.
    #[arg(
        id = "kafka_properties_file",
        long = "kafka-properties-file",
        env = "KAFKA_PROPERTIES_FILE",
        value_name = "PATH",
        value_parser = |path: &str| KafkaPropertiesFile::read(path),
        global = true
    )]
    pub properties_file: Option<KafkaPropertiesFile>,
}

impl KafkaArgs {
    /// The `key=value` settings given, in the order they apply: the file's, then
    /// KAFKA_PROPERTIES' (empty items skipped), so that the latter win.
    pub fn properties(&self) -> impl Iterator<Item = (&str, &str)> + Clone {
        self.properties_file
            .iter()
            .flat_map(KafkaPropertiesFile::pairs)
            .chain(self.properties.iter().filter_map(KafkaProperty::pair))
    }
}

/// The PostgreSQL database of the read models and the ledger.
#[derive(Debug, Clone, clap::Args)]
pub struct DatabaseArgs {
    /// PostgreSQL URL (the projector and ipp-actions may share one database). Or
    /// DATABASE_URL_FILE: a file holding it. Its password is never printed.
    #[arg(
        id = "database_url",
        value_name = "URL",
        long = "database-url",
        env = "DATABASE_URL",
        default_value = DEFAULT_DATABASE_URL,
        hide_env_values = true,
        global = true
    )]
    pub url: DatabaseUrl,

    /// Largest number of PostgreSQL connections of the service (formerly
    /// PROJECTOR_DB_CONNECTIONS / --db-connections for the projector, still accepted).
    #[arg(
        id = "database_max_connections",
        value_name = "N",
        long = "database-max-connections",
        alias = "db-connections",
        env = "DATABASE_MAX_CONNECTIONS",
        default_value_t = 10,
        global = true
    )]
    pub max_connections: u32,
}

/// The database `scripts/run` creates: a binary started without settings talks to it.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/ipp";

/// How the service logs.
#[derive(Debug, Clone, clap::Args)]
pub struct LogArgs {
    /// Log format: `pretty` (for people; `text` is accepted too) or `json` (one object
    /// per line).
    #[arg(
        id = "log_format",
        value_name = "FORMAT",
        long = "log-format",
        env = "LOG_FORMAT",
        value_enum,
        default_value_t = LogFormat::Pretty,
        global = true
    )]
    pub format: LogFormat,
}

/// The HTTP address of one service. Each service names its own variable
/// (`INGEST_LISTEN`, `PROJECTOR_HTTP`, ...) so that one environment can configure the
/// whole stack; the flag is `--listen` everywhere.
pub trait Listens {
    /// The environment variable.
    const ENV: &'static str;
    const DEFAULT: &'static str;
    /// What is served there, for `--help`.
    const SERVES: &'static str;
}

/// `--listen` / `<SERVICE>_LISTEN`: see [`Listens`].
pub struct ListenArgs<S> {
    pub addr: SocketAddr,
    service: PhantomData<fn() -> S>,
}

impl<S> ListenArgs<S> {
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            service: PhantomData,
        }
    }
}

impl<S: Listens> ListenArgs<S> {
    /// Binds the listener that the service's `run` serves on.
    pub async fn bind(&self) -> Result<TcpListener, BindError> {
        bind(self.addr, S::ENV).await
    }
}

async fn bind(addr: SocketAddr, setting: &'static str) -> Result<TcpListener, BindError> {
    TcpListener::bind(addr).await.map_err(|source| BindError {
        addr,
        setting,
        source,
    })
}

#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} ({setting})")]
pub struct BindError {
    addr: SocketAddr,
    setting: &'static str,
    #[source]
    source: std::io::Error,
}

impl<S> Clone for ListenArgs<S> {
    fn clone(&self) -> Self {
        Self::new(self.addr)
    }
}

impl<S> fmt::Debug for ListenArgs<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.addr.fmt(f)
    }
}

const LISTEN_ID: &str = "listen_address";

impl<S: Listens> clap::Args for ListenArgs<S> {
    fn augment_args(cmd: Command) -> Command {
        cmd.arg(
            Arg::new(LISTEN_ID)
                .long("listen")
                // ipp-projector's and ipp-actions' former flag.
                .alias("http")
                .env(S::ENV)
                .value_name("ADDR")
                .default_value(S::DEFAULT)
                .value_parser(clap::value_parser!(SocketAddr))
                .global(true)
                .help(format!("Address of the HTTP server ({}).", S::SERVES)),
        )
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

impl<S: Listens> clap::FromArgMatches for ListenArgs<S> {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let addr = matches
            .get_one::<SocketAddr>(LISTEN_ID)
            .copied()
            .expect("--listen has a default");
        Ok(Self::new(addr))
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        if let Some(addr) = matches.get_one::<SocketAddr>(LISTEN_ID) {
            self.addr = *addr;
        }
        Ok(())
    }
}

/// A service whose `/metrics` may move to an admin address of its own, away from the
/// listener its clients reach.
pub trait AdminListens {
    /// The environment variable (`<SERVICE>_ADMIN_LISTEN`).
    const ENV: &'static str;
}

/// `--admin-listen` / `<SERVICE>_ADMIN_LISTEN`: see [`AdminListens`]. Unset, `/metrics`
/// is served on the main listener.
pub struct AdminListenArgs<S> {
    pub addr: Option<SocketAddr>,
    service: PhantomData<fn() -> S>,
}

impl<S> AdminListenArgs<S> {
    pub fn new(addr: Option<SocketAddr>) -> Self {
        Self {
            addr,
            service: PhantomData,
        }
    }
}

impl<S: AdminListens> AdminListenArgs<S> {
    /// Binds the admin listener, when one is set.
    pub async fn bind(&self) -> Result<Option<TcpListener>, BindError> {
        match self.addr {
            Some(addr) => bind(addr, S::ENV).await.map(Some),
            None => Ok(None),
        }
    }
}

/// The sockets a service serves on. `main` binds them before the service starts, so that
/// an address in use fails at once, before any connection is made; a test binds port 0
/// and learns the port without a race.
#[derive(Debug)]
pub struct Listeners {
    /// The webhook, API and probes.
    pub public: TcpListener,
    /// `/metrics` and the probes, when an admin address is set.
    pub admin: Option<TcpListener>,
}

impl Listeners {
    pub async fn bind<S: Listens + AdminListens>(
        listen: &ListenArgs<S>,
        admin: &AdminListenArgs<S>,
    ) -> Result<Self, BindError> {
        Ok(Self {
            public: listen.bind().await?,
            admin: admin.bind().await?,
        })
    }
}

impl<S> Clone for AdminListenArgs<S> {
    fn clone(&self) -> Self {
        Self::new(self.addr)
    }
}

impl<S> fmt::Debug for AdminListenArgs<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.addr.fmt(f)
    }
}

const ADMIN_LISTEN_ID: &str = "admin_listen_address";

impl<S: AdminListens> clap::Args for AdminListenArgs<S> {
    fn augment_args(cmd: Command) -> Command {
        cmd.arg(
            Arg::new(ADMIN_LISTEN_ID)
                .long("admin-listen")
                .env(S::ENV)
                .value_name("ADDR")
                .value_parser(clap::value_parser!(SocketAddr))
                .global(true)
                .help(
                    "Address of a second HTTP server for operators: /metrics moves there \
                     (with /healthz and /readyz, which stay on the main address too). \
                     Unset, /metrics is on the main address.",
                ),
        )
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

impl<S: AdminListens> clap::FromArgMatches for AdminListenArgs<S> {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        Ok(Self::new(
            matches.get_one::<SocketAddr>(ADMIN_LISTEN_ID).copied(),
        ))
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        if let Some(addr) = matches.get_one::<SocketAddr>(ADMIN_LISTEN_ID) {
            self.addr = Some(*addr);
        }
        Ok(())
    }
}

/// Environment variables that were renamed, as (old, new). Call before parsing: an old
/// name that is set, while its new name is not, is carried over to the new name.
/// Returns the old names found, for a warning once logging is up.
pub fn accept_renamed_env(renames: &[(&'static str, &'static str)]) -> Vec<&'static str> {
    let mut used = Vec::new();
    for &(old, new) in renames {
        if let Some(value) = std::env::var_os(old) {
            if std::env::var_os(new).is_none() {
                std::env::set_var(new, value);
            }
            used.push(old);
        }
    }
    used
}

/// Logs a warning for each old variable name [`accept_renamed_env`] found.
pub fn warn_renamed_env(used: &[&str], renames: &[(&str, &str)]) {
    for old in used {
        if let Some((_, new)) = renames.iter().find(|(o, _)| o == old) {
            tracing::warn!("{old} is deprecated: set {new} instead");
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    struct Probe;
    impl Listens for Probe {
        const ENV: &'static str = "IPP_SERVICE_TEST_LISTEN";
        const DEFAULT: &'static str = "127.0.0.1:9999";
        const SERVES: &'static str = "tests";
    }

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        kafka: KafkaArgs,
        #[command(flatten)]
        database: DatabaseArgs,
        #[command(flatten)]
        log: LogArgs,
        #[command(flatten)]
        listen: ListenArgs<Probe>,
    }

    /// The defaults as declared (parsing would read this machine's environment:
    /// scripts/test exports KAFKA_BROKERS).
    #[test]
    fn defaults_are_the_local_stack() {
        let command = <Cli as clap::CommandFactory>::command();
        let default = |id: &str| {
            let arg = command.get_arguments().find(|a| a.get_id() == id).unwrap();
            arg.get_default_values()[0].to_string_lossy().into_owned()
        };
        assert_eq!(default("kafka_brokers"), "127.0.0.1:9092");
        assert_eq!(default("database_url"), DEFAULT_DATABASE_URL);
        assert_eq!(default("database_max_connections"), "10");
        assert_eq!(default("log_format"), "pretty");
        assert_eq!(default("listen_address"), "127.0.0.1:9999");
    }

    /// A service argument named like a shared field does not collide with it.
    #[test]
    fn service_fields_may_share_names_with_shared_ones() {
        #[derive(Debug, Parser)]
        struct Service {
            #[command(flatten)]
            shared: Cli,
            #[arg(long, default_value = "csv")]
            format: String,
            #[arg(long, default_value = "x")]
            url: String,
        }
        let parsed =
            Service::try_parse_from(["test", "--format", "jsonl", "--log-format", "json"]).unwrap();
        assert_eq!(parsed.format, "jsonl");
        assert_eq!(parsed.shared.log.format, LogFormat::Json);
    }

    #[test]
    fn flags_and_old_spellings() {
        let cli = Cli::try_parse_from([
            "test",
            "--kafka-property",
            "security.protocol=ssl",
            "--kafka-property",
            "",
            "--db-connections",
            "3",
            "--http",
            "0.0.0.0:1",
            "--log-format",
            "text",
        ])
        .unwrap();
        let properties: Vec<_> = cli.kafka.properties().collect();
        assert_eq!(properties, vec![("security.protocol", "ssl")]);
        assert_eq!(cli.database.max_connections, 3);
        assert_eq!(cli.listen.addr, "0.0.0.0:1".parse().unwrap());
        assert_eq!(cli.log.format, LogFormat::Pretty);
        let error = Cli::try_parse_from(["test", "--kafka-property", "sasl.password:hunter2"])
            .unwrap_err()
            .to_string();
        assert!(error.contains("is not KEY=VALUE"), "{error}");
        assert!(!error.contains("hunter2"), "{error}");
        assert!(Cli::try_parse_from(["test", "--listen", "nowhere"]).is_err());
    }
}

#[cfg(test)]
mod properties_file_tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        kafka: KafkaArgs,
    }

    #[test]
    fn the_file_applies_first_and_kafka_properties_win() {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(
            file.path(),
            "sasl.password=a,b=c\nclient.id=from-file\nacks=all\n",
        )
        .unwrap();
        let path = file.path().to_str().unwrap();
        let cli = Cli::try_parse_from([
            "test",
            "--kafka-properties-file",
            path,
            "--kafka-property",
            "client.id=from-flag",
        ])
        .unwrap();
        let properties: Vec<_> = cli.kafka.properties().collect();
        assert_eq!(
            properties,
            [
                ("sasl.password", "a,b=c"),
                ("client.id", "from-file"),
                ("acks", "all"),
                ("client.id", "from-flag"),
            ]
        );
        assert!(!format!("{cli:?}").contains("a,b=c"));
    }

    #[test]
    fn an_unreadable_or_bad_file_is_a_usage_error_naming_it() {
        let error = Cli::try_parse_from(["test", "--kafka-properties-file", "/nonexistent.props"])
            .unwrap_err();
        assert_eq!(error.exit_code(), 2);
        assert!(error.to_string().contains("/nonexistent.props"), "{error}");
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), "sasl.password hunter2\n").unwrap();
        let path = file.path().to_str().unwrap();
        let error = Cli::try_parse_from(["test", "--kafka-properties-file", path])
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("line 1") && !error.contains("hunter2"),
            "{error}"
        );
    }
}
