//! The service binaries as child processes, as an operator would run them: only for
//! what needs a real process (signals, exit codes, the CLIs' output, log pipes).

use std::{
    io::{BufRead, BufReader, Read},
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

/// Where `cargo build --bins` put the service binaries. `IPP_BIN_DIR` overrides; by
/// default it is the directory above the running test executable (`target/debug`).
pub fn bin_path(name: &str) -> PathBuf {
    let dir = std::env::var_os("IPP_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let exe = std::env::current_exe().expect("current exe");
            exe.parent()
                .and_then(|deps| deps.parent())
                .expect("target dir")
                .to_owned()
        });
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` first",
        path.display()
    );
    path
}

/// `binary args` on a clean environment (apart from PATH, and RUST_LOG defaulting to
/// `default_log`) plus `env`, stdin closed.
pub(crate) fn command(
    binary: &str,
    args: &[&str],
    env: &[(&str, String)],
    default_log: &str,
) -> Command {
    let mut command = Command::new(bin_path(binary));
    command
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| default_log.into()),
        )
        .stdin(Stdio::null());
    for (key, value) in env {
        command.env(key, value);
    }
    command
}

/// Waits until something accepts TCP connections on `127.0.0.1:port`.
pub fn wait_for_tcp(port: u16, within: Duration) {
    let deadline = Instant::now() + within;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "nothing listens on port {port} after {within:?}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// A running service binary; killed when dropped.
pub struct Service {
    pub name: String,
    child: Option<Child>,
    /// What the process printed so far, when its output is watched.
    logs: Option<Arc<Mutex<String>>>,
    /// The threads reading the output; they end when the process closed it.
    watchers: Vec<thread::JoinHandle<()>>,
}

impl Service {
    /// Starts `binary` with `args` and `env` (on top of a clean environment apart from
    /// PATH and RUST_LOG), its output going to the test's own output.
    pub fn spawn(binary: &str, args: &[&str], env: &[(&str, String)]) -> Self {
        let child = command(binary, args, env, "info")
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {binary}: {e}"));
        Self {
            name: binary.to_owned(),
            child: Some(child),
            logs: None,
            watchers: Vec::new(),
        }
    }

    /// Starts the binary of `config` with the environment that configures it, plus
    /// `args`, its output watched (see [`Service::spawn_watched`]).
    pub fn start<C: ChildConfig>(config: &C, args: &[&str]) -> Self {
        Self::spawn_watched(C::BINARY, args, &config.env())
    }

    /// Like [`Service::spawn`], but both outputs are read line by line: passed on to the
    /// test's output and kept, for [`Service::logs`] and [`Service::listen_addr`].
    pub fn spawn_watched(binary: &str, args: &[&str], env: &[(&str, String)]) -> Self {
        let mut child = command(binary, args, env, "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {binary}: {e}"));
        let logs = Arc::new(Mutex::new(String::new()));
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        let watchers = vec![
            watch(binary, stdout, logs.clone()),
            watch(binary, stderr, logs.clone()),
        ];
        Self {
            name: binary.to_owned(),
            child: Some(child),
            logs: Some(logs),
            watchers,
        }
    }

    /// Everything the process printed so far (stdout and stderr, interleaved by line).
    pub fn logs(&self) -> String {
        let logs = self.logs.as_ref().expect("output watched");
        logs.lock().expect("logs").clone()
    }

    /// The address the service logged it listens on (`listen=` of ipp-ingest, `addr=` of
    /// ipp-om-sim, either format), for a service started on `127.0.0.1:0`.
    pub fn listen_addr(&mut self, within: Duration) -> SocketAddr {
        let deadline = Instant::now() + within;
        loop {
            if let Some(addr) = self.logs().lines().find_map(listen_addr_in) {
                return addr;
            }
            assert!(
                self.is_running(),
                "{} exited before it listened:\n{}",
                self.name,
                self.logs()
            );
            assert!(
                Instant::now() < deadline,
                "{} logged no listen address within {within:?}:\n{}",
                self.name,
                self.logs()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Sends a signal by name (`TERM`, `KILL`, `INT`).
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{signal} {} failed", self.name);
    }

    /// Waits for the process to exit and returns its exit status.
    pub fn wait(&mut self, within: Duration) -> std::process::ExitStatus {
        let child = self.child.as_mut().expect("running");
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                // The last lines it printed, read to the end of its output.
                for watcher in self.watchers.drain(..) {
                    let _ = watcher.join();
                }
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {within:?}",
                self.name
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGTERM and waits for the exit (graceful shutdown); returns the status.
    pub fn terminate(&mut self, within: Duration) -> std::process::ExitStatus {
        self.signal("TERM");
        self.wait(within)
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => child.try_wait().expect("try_wait").is_none(),
            None => false,
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Reads `pipe` line by line on a thread of its own: each line to the test's output
/// (prefixed with `name`) and to `logs`.
fn watch(
    name: &str,
    pipe: impl Read + Send + 'static,
    logs: Arc<Mutex<String>>,
) -> thread::JoinHandle<()> {
    let name = name.to_owned();
    thread::spawn(move || {
        let mut reader = BufReader::new(pipe);
        let mut line = Vec::new();
        while reader.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
            let text = String::from_utf8_lossy(&line);
            eprint!("[{name}] {text}");
            logs.lock().expect("logs").push_str(&text);
            line.clear();
        }
    })
}

/// The listen address in one log line of a service's start-up ("… listening"), pretty
/// (`listen=127.0.0.1:4000`, maybe with colour codes) or JSON (`"listen":"…"`).
pub fn listen_addr_in(line: &str) -> Option<SocketAddr> {
    if !line.contains("listening") {
        return None;
    }
    let plain = strip_ansi(line);
    ["listen=", "addr=", "\"listen\":\"", "\"addr\":\""]
        .iter()
        .find_map(|key| {
            let start = plain.find(key)? + key.len();
            let value: String = plain[start..]
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
                .collect();
            value.parse().ok()
        })
}

/// `line` without ANSI escape sequences (`ESC [ … letter`).
fn strip_ansi(line: &str) -> String {
    let mut plain = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain
}

/// `config`'s binary with both outputs piped and left to the caller (for the tests that
/// read or break its logs), on the environment that configures it plus `args`.
pub fn spawn_piped<C: ChildConfig>(config: &C, args: &[&str]) -> Child {
    command(C::BINARY, args, &config.env(), "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", C::BINARY))
}

/// Reads `pipe` until the service logs its listen address; returns it. For a test that
/// then closes the pipe itself.
pub fn read_listen_addr(pipe: impl Read, within: Duration) -> SocketAddr {
    let deadline = Instant::now() + within;
    let mut reader = BufReader::new(pipe);
    let mut line = String::new();
    loop {
        line.clear();
        let read = reader
            .read_line(&mut line)
            .expect("read the service's output");
        assert!(read > 0, "the service's output ended before it listened");
        if let Some(addr) = listen_addr_in(&line) {
            return addr;
        }
        assert!(
            Instant::now() < deadline,
            "no listen address within {within:?}"
        );
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A typed service configuration as the environment of a child process: the one place
/// where the tests spell the services' environment variable names. Each conversion
/// destructures the whole `Config`, so that a new or renamed setting breaks the build.
pub trait ChildConfig {
    const BINARY: &'static str;
    /// The environment that makes the binary run with this configuration.
    fn env(&self) -> Vec<(&'static str, String)>;
}

fn kafka_env(kafka: &ipp_service::KafkaArgs) -> Vec<(&'static str, String)> {
    let ipp_service::KafkaArgs {
        brokers,
        properties,
        properties_file,
    } = kafka;
    let properties: Vec<String> = properties
        .iter()
        .filter_map(ipp_service::KafkaProperty::pair)
        .map(|(key, value)| format!("{key}={value}"))
        .collect();
    let mut env = vec![("KAFKA_BROKERS", brokers.clone())];
    if !properties.is_empty() {
        env.push(("KAFKA_PROPERTIES", properties.join(",")));
    }
    if let Some(file) = properties_file {
        env.push(("KAFKA_PROPERTIES_FILE", file.path.display().to_string()));
    }
    env
}

fn database_env(database: &ipp_service::DatabaseArgs) -> [(&'static str, String); 2] {
    let ipp_service::DatabaseArgs {
        url,
        max_connections,
    } = database;
    [
        ("DATABASE_URL", url.expose().to_owned()),
        ("DATABASE_MAX_CONNECTIONS", max_connections.to_string()),
    ]
}

fn log_env(log: &ipp_service::LogArgs) -> (&'static str, String) {
    let ipp_service::LogArgs { format } = log;
    ("LOG_FORMAT", value_name(format))
}

/// What `--flag <value>` takes for a clap value enum.
fn value_name<T: clap::ValueEnum>(value: &T) -> String {
    value
        .to_possible_value()
        .expect("not skipped")
        .get_name()
        .to_owned()
}

impl ChildConfig for ipp_ingest::Config {
    const BINARY: &'static str = "ipp-ingest";

    /// `--insecure-skip-verify` has no variable: pass it as an argument.
    fn env(&self) -> Vec<(&'static str, String)> {
        let ipp_ingest::Config {
            listen,
            admin_listen,
            kafka,
            ipp_topic,
            other_topic,
            webhook_secrets,
            accounts_file,
            insecure_skip_verify: _,
            signature_tolerance_secs,
            max_body_bytes,
            header_read_timeout_ms,
            body_read_timeout_ms,
            max_connections,
            produce_timeout_ms,
            retry_after_secs,
            shutdown_timeout_secs,
            log,
        } = self;
        let secrets: Vec<&str> = webhook_secrets.iter().map(|s| s.expose()).collect();
        let mut env = Vec::new();
        if !secrets.is_empty() {
            env.push(("KUSTOM_WEBHOOK_SECRETS", secrets.join(",")));
        }
        if let Some(path) = accounts_file {
            env.push(("KUSTOM_ACCOUNTS_FILE", path.display().to_string()));
        }
        if let Some(admin) = admin_listen.addr {
            env.push(("INGEST_ADMIN_LISTEN", admin.to_string()));
        }
        env.extend([
            ("INGEST_LISTEN", listen.addr.to_string()),
            ("IPP_TOPIC", ipp_topic.clone()),
            ("KUSTOM_OTHER_TOPIC", other_topic.clone()),
            (
                "INGEST_SIGNATURE_TOLERANCE_SECS",
                signature_tolerance_secs.to_string(),
            ),
            ("INGEST_MAX_BODY_BYTES", max_body_bytes.to_string()),
            (
                "INGEST_HEADER_READ_TIMEOUT_MS",
                header_read_timeout_ms.to_string(),
            ),
            (
                "INGEST_BODY_READ_TIMEOUT_MS",
                body_read_timeout_ms.to_string(),
            ),
            ("INGEST_MAX_CONNECTIONS", max_connections.to_string()),
            ("INGEST_PRODUCE_TIMEOUT_MS", produce_timeout_ms.to_string()),
            ("INGEST_RETRY_AFTER_SECS", retry_after_secs.to_string()),
            (
                "INGEST_SHUTDOWN_TIMEOUT_SECS",
                shutdown_timeout_secs.to_string(),
            ),
            log_env(log),
        ]);
        env.extend(kafka_env(kafka));
        env
    }
}

impl ChildConfig for ipp_projector::Config {
    const BINARY: &'static str = "ipp-projector";

    fn env(&self) -> Vec<(&'static str, String)> {
        let ipp_projector::Config {
            kafka,
            database,
            listen,
            ipp_topic,
            dlq_topic,
            schema,
            group,
            batch_size,
            batch_wait_ms,
            apply_lanes,
            max_payload_bytes,
            orders,
            orders_group,
            kustom_topic,
            observations_topic,
            orders_confirmation_timeout_secs,
            migrate,
            log,
        } = self;
        let mut env = vec![
            ("PROJECTOR_HTTP", listen.addr.to_string()),
            ("PROJECTOR_ORDERS", orders.to_string()),
            ("PROJECTOR_ORDERS_GROUP", orders_group.clone()),
            ("KUSTOM_OTHER_TOPIC", kustom_topic.clone()),
            ("IPP_OBSERVATIONS_TOPIC", observations_topic.clone()),
            (
                "PROJECTOR_ORDERS_CONFIRMATION_TIMEOUT_SECS",
                orders_confirmation_timeout_secs.to_string(),
            ),
            ("IPP_TOPIC", ipp_topic.clone()),
            ("IPP_DLQ_TOPIC", dlq_topic.clone()),
            ("PROJECTOR_SCHEMA", schema.clone()),
            ("PROJECTOR_GROUP", group.clone()),
            ("PROJECTOR_BATCH_SIZE", batch_size.to_string()),
            ("PROJECTOR_BATCH_WAIT_MS", batch_wait_ms.to_string()),
            ("PROJECTOR_APPLY_LANES", apply_lanes.to_string()),
            ("PROJECTOR_MAX_PAYLOAD_BYTES", max_payload_bytes.to_string()),
            ("PROJECTOR_MIGRATE", migrate.to_string()),
            log_env(log),
        ];
        env.extend(kafka_env(kafka));
        env.extend(database_env(database));
        env
    }
}

impl ChildConfig for ipp_actions::Config {
    const BINARY: &'static str = "ipp-actions";

    fn env(&self) -> Vec<(&'static str, String)> {
        let ipp_actions::Config {
            kafka,
            database,
            listen,
            admin_listen,
            ipp_topic,
            dlq_topic,
            commands_topic,
            observations_topic,
            kustom_topic,
            group,
            capture_policy,
            on_finalized,
            api_tokens,
            api_produce_timeout_ms,
            api_retry_after_secs,
            kustom_api_url,
            kustom_api_key,
            accounts_file,
            http_timeout_ms,
            connect_timeout_ms,
            concurrency,
            om_rate_limit,
            om_rate_burst,
            max_calls_per_sec,
            inplace_retries,
            inplace_min_delay_ms,
            inplace_max_delay_ms,
            retry_min_delay_ms,
            retry_max_delay_ms,
            max_attempts,
            max_retry_secs,
            lease_ms,
            poll_interval_ms,
            shutdown_timeout_secs,
            migrate,
            log,
        } = self;
        let mut env = vec![
            ("ACTIONS_HTTP", listen.addr.to_string()),
            ("IPP_TOPIC", ipp_topic.clone()),
            ("ACTIONS_DLQ_TOPIC", dlq_topic.clone()),
            ("ACTIONS_GROUP", group.clone()),
            ("ACTIONS_COMMANDS_TOPIC", commands_topic.clone()),
            ("ACTIONS_OBSERVATIONS_TOPIC", observations_topic.clone()),
            ("ACTIONS_KUSTOM_TOPIC", kustom_topic.clone()),
            (
                "ACTIONS_API_PRODUCE_TIMEOUT_MS",
                api_produce_timeout_ms.to_string(),
            ),
            (
                "ACTIONS_API_RETRY_AFTER_SECS",
                api_retry_after_secs.to_string(),
            ),
            ("KUSTOM_API_URL", kustom_api_url.clone()),
            ("KUSTOM_API_KEY", kustom_api_key.expose().to_owned()),
            ("ACTIONS_HTTP_TIMEOUT_MS", http_timeout_ms.to_string()),
            ("ACTIONS_CONNECT_TIMEOUT_MS", connect_timeout_ms.to_string()),
            ("ACTIONS_CONCURRENCY", concurrency.to_string()),
            ("ACTIONS_OM_RATE_BURST", om_rate_burst.to_string()),
            ("ACTIONS_INPLACE_RETRIES", inplace_retries.to_string()),
            (
                "ACTIONS_INPLACE_MIN_DELAY_MS",
                inplace_min_delay_ms.to_string(),
            ),
            (
                "ACTIONS_INPLACE_MAX_DELAY_MS",
                inplace_max_delay_ms.to_string(),
            ),
            ("ACTIONS_RETRY_MIN_DELAY_MS", retry_min_delay_ms.to_string()),
            ("ACTIONS_RETRY_MAX_DELAY_MS", retry_max_delay_ms.to_string()),
            ("ACTIONS_MAX_ATTEMPTS", max_attempts.to_string()),
            ("ACTIONS_MAX_RETRY_SECS", max_retry_secs.to_string()),
            ("ACTIONS_LEASE_MS", lease_ms.to_string()),
            ("ACTIONS_POLL_INTERVAL_MS", poll_interval_ms.to_string()),
            (
                "ACTIONS_SHUTDOWN_TIMEOUT_SECS",
                shutdown_timeout_secs.to_string(),
            ),
            ("ACTIONS_MIGRATE", migrate.to_string()),
            log_env(log),
        ];
        // Unset is not the same as any value: these have no default of their own.
        if let Some(policy) = capture_policy {
            env.push(("ACTIONS_CAPTURE_POLICY", value_name(policy)));
        }
        if let Some(policy) = on_finalized {
            env.push(("ACTIONS_ON_FINALIZED", value_name(policy)));
        }
        if let Some(limit) = om_rate_limit {
            env.push(("ACTIONS_OM_RATE_LIMIT", limit.to_string()));
        }
        if let Some(limit) = max_calls_per_sec {
            env.push(("ACTIONS_MAX_CALLS_PER_SEC", limit.to_string()));
        }
        if let Some(admin) = admin_listen.addr {
            env.push(("ACTIONS_ADMIN_LISTEN", admin.to_string()));
        }
        if let Some(path) = accounts_file {
            env.push(("KUSTOM_ACCOUNTS_FILE", path.display().to_string()));
        }
        // An empty list is not a value (an empty token is refused): leave it unset.
        if !api_tokens.is_empty() {
            let tokens: Vec<&str> = api_tokens.iter().map(|t| t.expose()).collect();
            env.push(("ACTIONS_API_TOKENS", tokens.join(",")));
        }
        env.extend(kafka_env(kafka));
        env.extend(database_env(database));
        env
    }
}

impl ChildConfig for ipp_om_sim::Config {
    const BINARY: &'static str = "ipp-om-sim";

    fn env(&self) -> Vec<(&'static str, String)> {
        let ipp_om_sim::Config {
            listen,
            api_key,
            merchant_id,
            accounts,
            currency,
            idempotency_ttl_secs,
            seed,
            faults,
            limits,
            webhooks,
            log,
        } = self;
        let ipp_om_sim::Limits {
            account_rate_limit,
            account_rate_burst,
        } = limits;
        let ipp_om_sim::WebhookArgs {
            url: webhook_url,
            secret: webhook_secret,
            duplicate_rate,
            delay_ms,
            delay_jitter_ms,
            retry_initial_ms,
            retry_max_ms,
            give_up_secs,
            timeout_ms,
            queue_capacity,
        } = webhooks;
        let ipp_om_sim::Faults {
            fail_rate,
            rate_limit_rate,
            retry_after_secs,
            retry_after,
            latency_ms,
            hang_rate,
            hang_ms,
            drop_rate,
            fault_after_effect_rate,
        } = faults;
        let mut env = vec![
            ("OM_SIM_LISTEN", listen.addr.to_string()),
            ("OM_SIM_API_KEY", api_key.expose().to_owned()),
            ("OM_SIM_MERCHANT_ID", merchant_id.clone()),
            ("OM_SIM_CURRENCY", currency.clone()),
            (
                "OM_SIM_IDEMPOTENCY_TTL_SECS",
                idempotency_ttl_secs.to_string(),
            ),
            ("OM_SIM_SEED", seed.to_string()),
            ("OM_SIM_FAIL_RATE", fail_rate.to_string()),
            ("OM_SIM_RATE_LIMIT_RATE", rate_limit_rate.to_string()),
            ("OM_SIM_RETRY_AFTER_SECS", retry_after_secs.to_string()),
            ("OM_SIM_LATENCY_MS", latency_ms.to_string()),
            ("OM_SIM_HANG_RATE", hang_rate.to_string()),
            ("OM_SIM_HANG_MS", hang_ms.to_string()),
            ("OM_SIM_DROP_RATE", drop_rate.to_string()),
            (
                "OM_SIM_FAULT_AFTER_EFFECT_RATE",
                fault_after_effect_rate.to_string(),
            ),
            ("OM_SIM_ACCOUNT_RATE_LIMIT", account_rate_limit.to_string()),
            ("OM_SIM_WEBHOOK_DUPLICATE_RATE", duplicate_rate.to_string()),
            ("OM_SIM_WEBHOOK_DELAY_MS", delay_ms.to_string()),
            (
                "OM_SIM_WEBHOOK_DELAY_JITTER_MS",
                delay_jitter_ms.to_string(),
            ),
            (
                "OM_SIM_WEBHOOK_RETRY_INITIAL_MS",
                retry_initial_ms.to_string(),
            ),
            ("OM_SIM_WEBHOOK_RETRY_MAX_MS", retry_max_ms.to_string()),
            ("OM_SIM_WEBHOOK_GIVE_UP_SECS", give_up_secs.to_string()),
            ("OM_SIM_WEBHOOK_TIMEOUT_MS", timeout_ms.to_string()),
            ("OM_SIM_WEBHOOK_QUEUE_CAPACITY", queue_capacity.to_string()),
            log_env(log),
        ];
        if let Some(value) = retry_after {
            env.push(("OM_SIM_RETRY_AFTER", value.clone()));
        }
        if let Some(burst) = account_rate_burst {
            env.push(("OM_SIM_ACCOUNT_RATE_BURST", burst.to_string()));
        }
        if !accounts.is_empty() {
            let accounts: Vec<String> = accounts
                .iter()
                .map(|a| format!("{}:{}", a.merchant_id, a.api_key.expose()))
                .collect();
            env.push(("OM_SIM_ACCOUNTS", accounts.join(",")));
        }
        if let Some(url) = webhook_url {
            env.push(("OM_SIM_WEBHOOK_URL", url.clone()));
        }
        if let Some(secret) = webhook_secret {
            env.push(("OM_SIM_WEBHOOK_SECRET", secret.expose().to_owned()));
        }
        env
    }
}
