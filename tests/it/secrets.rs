//! No secret is ever printed, and every secret may come from a file: `--help` and
//! `--version` of every binary and subcommand, the services' logs from start to stop,
//! their errors (a bad database URL, a bad Kafka property, a failing SASL handshake);
//! each `X_FILE` variable reaching its service, and its misuses refused with exit 2.

use std::{path::Path, time::Duration};

use base64::{engine::general_purpose::STANDARD, Engine};
use ipp_service::{KafkaPropertiesFile, ListenArgs, Secret};
use ipp_tests::{
    actions::Event,
    cli,
    db::{self, TestDatabase},
    eventually::eventually,
    inprocess::{actions_config, ingest_config, om_sim_config, projector_config, OrderManagement},
    kafka,
    om_sim::SimApi,
    process::{ChildConfig, Service},
    signer::Signer,
    unique_name,
};
use rdkafka::{
    consumer::{BaseConsumer, Consumer},
    ClientConfig,
};
use reqwest::StatusCode;
use uuid::Uuid;

/// Every binary, and the variables of secrets each may read as `X_FILE`.
const BINARIES: &[&str] = &[
    "ipp-ingest",
    "ipp-projector",
    "ipp-actions",
    "ipp-om-sim",
    "ipp-demo",
    "ipp-bench",
    "ipp-soak",
];

/// The settings that hold a secret and may be given as a file.
const FILE_VARIABLES: &[&str] = &[
    "DATABASE_URL",
    "KUSTOM_API_KEY",
    "KUSTOM_WEBHOOK_SECRETS",
    "OM_SIM_API_KEY",
    "ACTIONS_API_TOKENS",
];

/// A value no output may contain: `hunter2` and a unique suffix.
fn marker(what: &str) -> String {
    format!("hunter2{what}{}", Uuid::new_v4().simple())
}

/// Secrets of every kind, each with its marker, as environment variables.
struct Secrets {
    env: Vec<(&'static str, String)>,
    markers: Vec<String>,
}

impl Secrets {
    fn new() -> Self {
        let m: Vec<String> = [
            "db", "kafka", "api", "whsec", "sim", "token", "bench", "soak",
        ]
        .iter()
        .map(|w| marker(w))
        .collect();
        let env = vec![
            (
                "DATABASE_URL",
                format!("postgres://ipp:{}@db.example:5432/ipp", m[0]),
            ),
            (
                "KAFKA_PROPERTIES",
                format!("sasl.username=ipp,sasl.password={}", m[1]),
            ),
            ("KUSTOM_API_KEY", format!("kco_live_{}", m[2])),
            ("KUSTOM_WEBHOOK_SECRETS", format!("whsec_{}", m[3])),
            ("OM_SIM_API_KEY", m[4].clone()),
            ("ACTIONS_API_TOKENS", format!("backoffice:{}", m[5])),
            (
                "BENCH_DATABASE_URL",
                format!("postgres://ipp:{}@db.example/postgres", m[6]),
            ),
            (
                "TEST_DATABASE_URL",
                format!("postgres://ipp:{}@db.example/postgres", m[7]),
            ),
        ];
        Self { env, markers: m }
    }

    fn assert_absent(&self, what: &str, text: &str) {
        for marker in &self.markers {
            assert!(
                !text.contains(marker),
                "{what} prints a secret ({marker}):\n{text}"
            );
        }
    }
}

/// `env` with each of `FILE_VARIABLES` moved into a file of `dir` named by `X_FILE`
/// (with the trailing newline editors add), and `KAFKA_PROPERTIES` into a properties
/// file named by `KAFKA_PROPERTIES_FILE`.
fn into_files(env: &[(&'static str, String)], dir: &Path) -> Vec<(&'static str, String)> {
    std::fs::create_dir_all(dir).unwrap();
    let mut moved = Vec::new();
    for (name, value) in env {
        let file_variable = match *name {
            "KAFKA_PROPERTIES" => {
                let path = dir.join("kafka.properties");
                let lines: Vec<&str> = value.split(',').collect();
                std::fs::write(&path, format!("# managed Kafka\n{}\n", lines.join("\n"))).unwrap();
                moved.push(("KAFKA_PROPERTIES_FILE", path.display().to_string()));
                continue;
            }
            "DATABASE_URL" => "DATABASE_URL_FILE",
            "KUSTOM_API_KEY" => "KUSTOM_API_KEY_FILE",
            "KUSTOM_WEBHOOK_SECRETS" => "KUSTOM_WEBHOOK_SECRETS_FILE",
            "OM_SIM_API_KEY" => "OM_SIM_API_KEY_FILE",
            "ACTIONS_API_TOKENS" => "ACTIONS_API_TOKENS_FILE",
            _ => {
                moved.push((*name, value.clone()));
                continue;
            }
        };
        let path = dir.join(name.to_ascii_lowercase());
        std::fs::write(&path, format!("{value}\n")).unwrap();
        moved.push((file_variable, path.display().to_string()));
    }
    moved
}

/// The subcommands in the `Commands:` section of a help text, except `help`.
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|line| !line.starts_with("Commands:"))
        .skip(1)
        .take_while(|line| !line.trim().is_empty())
        .filter_map(|line| line.strip_prefix("  ")?.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_owned)
        .collect()
}

fn run(binary: &str, args: &[&str], env: &[(&str, String)]) -> cli::Output {
    cli::run(binary, args, env, Duration::from_secs(20))
}

/// Runs `--help` and `-h` of `command` and of each of its subcommands, recursively;
/// returns each long help with the command line that printed it.
fn walk(command: &[String], env: &[(&str, String)], helps: &mut Vec<(String, String)>) {
    let (binary, args) = command.split_first().unwrap();
    let mut long = Vec::new();
    for flag in ["--help", "-h"] {
        let argv: Vec<&str> = args.iter().map(String::as_str).chain([flag]).collect();
        let output = run(binary, &argv, env);
        let line = format!("{binary} {}", argv.join(" "));
        assert!(output.status.success(), "`{line}`: {}", output.stderr);
        if flag == "--help" {
            long = vec![output.stdout.clone()];
        }
        helps.push((line, format!("{}{}", output.stdout, output.stderr)));
    }
    for sub in subcommands(&long[0]) {
        let mut deeper = command.to_vec();
        deeper.push(sub);
        walk(&deeper, env, helps);
    }
}

/// `--help` (long and short) of every binary and every subcommand, and `--version`,
/// with a secret in every variable that may hold one, first in the environment, then in
/// files: no secret appears, and each secret setting's help names its `X_FILE`.
#[test]
fn help_and_version_never_print_a_secret() {
    let secrets = Secrets::new();
    let dir = tempfile::tempdir().unwrap();
    let from_files = into_files(&secrets.env, dir.path());
    for env in [&secrets.env, &from_files] {
        let mut helps = Vec::new();
        for binary in BINARIES {
            let before = helps.len();
            walk(&[(*binary).to_owned()], env, &mut helps);
            if !helps[before].1.contains("--version") {
                continue;
            }
            let output = run(binary, &["--version"], env);
            assert!(
                output.status.success(),
                "{binary} --version: {}",
                output.stderr
            );
            helps.push((
                format!("{binary} --version"),
                format!("{}{}", output.stdout, output.stderr),
            ));
        }
        assert!(helps.len() > 40, "every subcommand walked: {}", helps.len());
        for (line, text) in &helps {
            secrets.assert_absent(&format!("`{line}`"), text);
            if !line.ends_with("--help") {
                continue;
            }
            for name in FILE_VARIABLES {
                if text.contains(&format!("[env: {name}")) {
                    assert!(
                        text.contains(&format!("{name}_FILE")),
                        "`{line}` does not say {name} may come from {name}_FILE"
                    );
                }
            }
        }
    }
}

/// A secret set both ways, a missing or unreadable file, a properties file with a bad
/// line and a Kafka property that is not KEY=VALUE: each binary exits 2 at once, naming
/// the variables, the file or the line, never a secret.
#[test]
fn misused_secret_settings_are_usage_errors_that_show_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    let secret = marker("file");
    let file = dir.path().join("secret");
    std::fs::write(&file, format!("{secret}\n")).unwrap();
    let file = file.display().to_string();
    let cases: &[(&str, &str)] = &[
        ("ipp-ingest", "KUSTOM_WEBHOOK_SECRETS"),
        ("ipp-projector", "DATABASE_URL"),
        ("ipp-actions", "DATABASE_URL"),
        ("ipp-actions", "KUSTOM_API_KEY"),
        ("ipp-actions", "ACTIONS_API_TOKENS"),
        ("ipp-om-sim", "OM_SIM_API_KEY"),
        ("ipp-demo", "KUSTOM_WEBHOOK_SECRETS"),
    ];
    for (binary, name) in cases {
        let in_env = marker("env");
        let file_variable = format!("{name}_FILE");
        let both = [
            (*name, in_env.clone()),
            (file_variable.as_str(), file.clone()),
        ];
        let output = run(binary, &[], &both);
        assert_eq!(output.status.code(), Some(2), "{binary}: {}", output.stderr);
        assert!(
            output
                .stderr
                .contains(&format!("{name} and {name}_FILE are both set")),
            "{binary}: {}",
            output.stderr
        );
        let printed = format!("{}{}", output.stdout, output.stderr);
        assert!(
            !printed.contains(&in_env) && !printed.contains(&secret),
            "{printed}"
        );

        let missing = dir.path().join("missing").display().to_string();
        let output = run(binary, &[], &[(file_variable.as_str(), missing.clone())]);
        assert_eq!(output.status.code(), Some(2), "{binary}: {}", output.stderr);
        assert!(
            output
                .stderr
                .contains(&format!("{name}_FILE: cannot read {missing}")),
            "{binary}: {}",
            output.stderr
        );
    }

    let properties = dir.path().join("kafka.properties");
    std::fs::write(&properties, format!("acks=all\nsasl.password {secret}\n")).unwrap();
    // (what is wrong, the environment, what the message must say)
    type Case<'a> = (&'a str, Vec<(&'a str, String)>, &'a str);
    let bad_kafka: [Case<'_>; 3] = [
        (
            "a properties file with a bad line",
            vec![("KAFKA_PROPERTIES_FILE", properties.display().to_string())],
            "line 2",
        ),
        (
            "a missing properties file",
            vec![(
                "KAFKA_PROPERTIES_FILE",
                "/nonexistent/kafka.properties".into(),
            )],
            "/nonexistent/kafka.properties",
        ),
        (
            "a property that is not KEY=VALUE",
            vec![(
                "KAFKA_PROPERTIES",
                format!("acks=all,sasl.password:{secret}"),
            )],
            "is not KEY=VALUE",
        ),
    ];
    for binary in ["ipp-ingest", "ipp-projector", "ipp-actions"] {
        for (what, env, expected) in &bad_kafka {
            let output = run(binary, &[], env);
            assert_eq!(
                output.status.code(),
                Some(2),
                "{binary}, {what}: {}",
                output.stderr
            );
            assert!(
                output.stderr.contains(expected),
                "{binary}, {what}: {}",
                output.stderr
            );
            assert!(
                !output.stderr.contains(&secret),
                "{binary}, {what}: {}",
                output.stderr
            );
        }
    }
}

/// Database URLs that cannot be used (not a URL, an unknown role, an unknown database)
/// and Kafka credentials the broker cannot take: the errors and logs name the problem,
/// never the password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_errors_never_print_the_password() {
    let password = marker("db");
    let server = db::server_url();
    let (base, _) = server.rsplit_once('/').unwrap();
    let bad_urls = [
        format!("postgres://ipp:{password}@127.0.0.1:notaport/ipp"),
        format!(
            "postgres://nosuchrole_{}:{password}@127.0.0.1:5432/postgres",
            Uuid::new_v4().simple()
        ),
        format!(
            "{}/nosuchdb_{}?password={password}",
            base,
            Uuid::new_v4().simple()
        ),
    ];
    for url in &bad_urls {
        for binary in ["ipp-projector", "ipp-actions"] {
            let output = run(binary, &["migrate"], &[("DATABASE_URL", url.clone())]);
            assert!(!output.status.success(), "{binary} migrate with {url}");
            let printed = format!("{}{}", output.stdout, output.stderr);
            assert!(!printed.is_empty());
            assert!(!printed.contains(&password), "{binary} migrate:\n{printed}");
        }
    }

    // SASL against the test broker's plaintext listener: the handshake fails.
    let brokers = kafka::brokers();
    let kafka_password = marker("sasl");
    let ipp_topic = kafka::create_topic(&brokers, "secrets_sasl", 1).await;
    let mut config = ingest_config(&brokers, &ipp_topic, &ipp_topic, &[Signer::random_secret()]);
    config.listen = ListenArgs::new(([127, 0, 0, 1], 0).into());
    let mut env = config.env();
    env.retain(|(name, _)| *name != "KAFKA_PROPERTIES");
    env.push((
        "KAFKA_PROPERTIES",
        format!(
            "security.protocol=SASL_PLAINTEXT,sasl.mechanisms=PLAIN,sasl.username=ipp,sasl.password={kafka_password}"
        ),
    ));
    let mut ingest = Service::spawn_watched("ipp-ingest", &[], &env);
    // It checks its topics before it listens, and logs why they are not usable.
    ingest.listen_addr(Duration::from_secs(60));
    let logs = ingest.logs();
    assert!(
        logs.contains("not usable yet"),
        "ingest logs the broker trouble:\n{logs}"
    );
    ingest.terminate(Duration::from_secs(30));
    let logs = ingest.logs();
    assert!(!logs.contains(&kafka_password), "ingest logs:\n{logs}");
}

/// The whole pipeline as processes with every secret in the environment: it works, and
/// nothing it logs from start to stop holds a secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_in_the_environment_work_and_are_never_logged() {
    stack(false).await;
}

/// The same with every secret in a file (`X_FILE`, `KAFKA_PROPERTIES_FILE` with a
/// `client.id` holding `,` and `=`, which `KAFKA_PROPERTIES` cannot carry): each reaches
/// its service, and none is logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_from_files_reach_every_service_and_are_never_logged() {
    stack(true).await;
}

async fn stack(from_files: bool) {
    let dir = tempfile::tempdir().unwrap();
    let brokers = kafka::brokers();
    let ipp_topic = kafka::create_topic(&brokers, "secrets_ipp", 2).await;
    kafka::create_actions_topics(&brokers, &ipp_topic, 2).await;
    let other_topic = kafka::create_topic(&brokers, "secrets_other", 1).await;
    let ipp_dlq = kafka::create_topic(&brokers, "secrets_ipp_dlq", 1).await;
    let actions_dlq = kafka::create_topic(&brokers, "secrets_actions_dlq", 1).await;
    let database = TestDatabase::create().await;

    // Markers: the webhook key's base64 text, the OM key, the database password, the
    // API token, a Kafka password.
    let webhook_key = marker("whsec");
    let webhook_secret = format!("whsec_{}", STANDARD.encode(&webhook_key));
    let webhook_marker = STANDARD.encode(&webhook_key);
    let api_key = format!("kco_test_{}", marker("omkey"));
    let db_password = marker("dbpw");
    let token = marker("token");
    let kafka_password = marker("kafkapw");
    let markers = [
        &webhook_marker,
        &api_key,
        &db_password,
        &token,
        &kafka_password,
    ];
    let database_url =
        database
            .url()
            .replacen("://postgres@", &format!("://postgres:{db_password}@"), 1);
    assert!(database_url.contains(&db_password), "{database_url}");

    let as_chosen = |env: Vec<(&'static str, String)>| {
        let mut env: Vec<_> = env
            .into_iter()
            .filter(|(n, _)| *n != "KAFKA_PROPERTIES")
            .collect();
        if from_files {
            let properties = dir
                .path()
                .join(format!("{}.properties", Uuid::new_v4().simple()));
            std::fs::write(&properties, format!("sasl.password={kafka_password}\n")).unwrap();
            env.push(("KAFKA_PROPERTIES_FILE", properties.display().to_string()));
            into_files(
                &env,
                dir.path()
                    .join(Uuid::new_v4().simple().to_string())
                    .as_path(),
            )
        } else {
            env.push((
                "KAFKA_PROPERTIES",
                format!("sasl.password={kafka_password}"),
            ));
            env
        }
    };
    let start = |binary: &str, env: Vec<(&'static str, String)>| {
        let mut service = Service::spawn_watched(binary, &[], &env);
        let addr = service.listen_addr(Duration::from_secs(30));
        (service, addr)
    };
    fn port_0<S>() -> ListenArgs<S> {
        ListenArgs::new(([127, 0, 0, 1], 0).into())
    }

    let mut sim = om_sim_config(&api_key);
    sim.listen = port_0();
    let (mut sim_process, sim_addr) = start("ipp-om-sim", as_chosen(sim.env()));
    let sim_url = format!("http://{sim_addr}");

    let mut ingest = ingest_config(
        &brokers,
        &ipp_topic,
        &other_topic,
        std::slice::from_ref(&webhook_secret),
    );
    ingest.listen = port_0();
    let (mut ingest_process, ingest_addr) = start("ipp-ingest", as_chosen(ingest.env()));

    let mut projector = projector_config(
        &brokers,
        &ipp_topic,
        &ipp_dlq,
        &database_url,
        &unique_name("secrets_projector"),
    );
    projector.listen = port_0();
    let (mut projector_process, _) = start("ipp-projector", as_chosen(projector.env()));

    let actions_group = unique_name("secrets_actions");
    let mut actions = actions_config(
        &brokers,
        &ipp_topic,
        &actions_dlq,
        &database_url,
        &actions_group,
        OrderManagement {
            url: &sim_url,
            api_key: &api_key,
        },
    );
    actions.listen = port_0();
    actions.api_tokens = vec![Secret::new(format!("ops:{token}"))];
    let mut actions_env = as_chosen(actions.env());
    // A client.id that only a properties file can carry.
    let client_id = "ipp-actions,zone=eu-1";
    if from_files {
        let file = actions_env
            .iter()
            .find(|(n, _)| *n == "KAFKA_PROPERTIES_FILE")
            .map(|(_, path)| path.clone())
            .unwrap();
        let mut text = std::fs::read_to_string(&file).unwrap();
        text.push_str(&format!("client.id={client_id}\n"));
        std::fs::write(&file, text).unwrap();
        let read = KafkaPropertiesFile::read(&file).unwrap();
        assert!(read
            .pairs()
            .any(|(k, v)| k == "client.id" && v == client_id));
        assert!(actions_env
            .iter()
            .all(|(n, _)| *n != "DATABASE_URL" && *n != "KUSTOM_API_KEY"));
    }
    let (mut actions_process, actions_addr) =
        start("ipp-actions", std::mem::take(&mut actions_env));

    // ingest verifies with the configured secret only.
    let http = reqwest::Client::new();
    let event = Event::finalized();
    let body = event.body();
    let post = |signer: Signer, body: Vec<u8>| {
        let http = http.clone();
        async move {
            let mut request = http.post(format!("http://{ingest_addr}/webhooks/kustom"));
            for (name, value) in signer.sign(&body).headers() {
                request = request.header(name, value);
            }
            request.body(body).send().await.unwrap().status()
        }
    };
    let forged = post(Signer::new(&Signer::random_secret()), body.clone()).await;
    assert_eq!(forged, StatusCode::UNAUTHORIZED);
    assert_eq!(
        post(Signer::new(&webhook_secret), body).await,
        StatusCode::OK
    );

    // The projector reached its database (password and all), ipp-actions its ledger and
    // the simulator with the key the simulator was given.
    let pool = database.pool().await;
    let session_id = event.session_id;
    eventually(Duration::from_secs(60), "the session is projected", || {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM ipp_sessions WHERE session_id = $1")
                .bind(session_id)
                .fetch_one(&pool)
                .await
                .is_ok_and(|n| n == 1)
        }
    })
    .await;
    let order = event.order_id.unwrap().to_string();
    let sim_api = SimApi::new(&sim_url, &api_key);
    eventually(
        Duration::from_secs(60),
        "the order is captured once",
        || {
            let (sim_api, order) = (&sim_api, &order);
            async move { sim_api.captures(order).await == 1 }
        },
    )
    .await;

    // The commands API takes the configured token, and only it.
    let command = format!("http://{actions_addr}/v1/commands/{}", Uuid::new_v4());
    let status = |bearer: String| {
        let (http, command) = (http.clone(), command.clone());
        async move {
            http.get(command)
                .bearer_auth(bearer)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(status(token.clone()).await, StatusCode::NOT_FOUND);
    assert_eq!(status(marker("wrong")).await, StatusCode::UNAUTHORIZED);

    if from_files {
        // The broker sees the client.id of the properties file, comma and all.
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .create()
            .unwrap();
        eventually(
            Duration::from_secs(30),
            "the group's members use the file's client.id",
            || {
                let groups =
                    consumer.fetch_group_list(Some(actions_group.as_str()), Duration::from_secs(5));
                let found = groups.is_ok_and(|groups| {
                    groups.groups().iter().any(|group| {
                        !group.members().is_empty()
                            && group.members().iter().all(|m| m.client_id() == client_id)
                    })
                });
                async move { found }
            },
        )
        .await;
    }

    for service in [
        &mut ingest_process,
        &mut projector_process,
        &mut actions_process,
        &mut sim_process,
    ] {
        assert!(
            service.terminate(Duration::from_secs(30)).success(),
            "{} stops",
            service.name
        );
        let logs = service.logs();
        assert!(
            logs.contains("listening"),
            "{} logged its start:\n{logs}",
            service.name
        );
        for marker in markers {
            assert!(
                !logs.contains(marker.as_str()),
                "{} logs a secret ({marker}):\n{logs}",
                service.name
            );
        }
    }
}
