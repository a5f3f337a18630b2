//! The services on a managed-style PostgreSQL: migrations as a separate step by the
//! role that owns the tables, then ipp-projector and ipp-actions as login roles that own
//! nothing and hold only `deploy/postgres/least-privilege.sql`'s grants. A service that
//! does not migrate refuses a database without its migrations; the pipeline then runs
//! end to end (capture, refund, orders in sync); the roles can neither create tables
//! nor read each other's; each service names itself in `application_name`.

use std::time::Duration;

use ipp_tests::{
    cli, eventually::eventually, orders::order_row, process::ChildConfig, processes::Processes,
    unique_name,
};
use sqlx::{postgres::PgPoolOptions, Connection, PgConnection};
use uuid::Uuid;

const MERCHANT: &str = "DM00000000";
const WAIT: Duration = Duration::from_secs(90);
const GRANTS: &str = include_str!("../../deploy/postgres/least-privilege.sql");

/// `owner_url` with `role` as its user (trust authentication on the test server).
fn url_as(owner_url: &str, role: &str) -> String {
    let (scheme, rest) = owner_url.split_once("://").expect("url");
    let host = rest.split_once('@').map_or(rest, |(_, host)| host);
    format!("{scheme}://{role}@{host}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_run_as_roles_that_own_nothing_after_the_owner_migrated() {
    let processes = Processes::start().await;
    let owner_url = processes.database.url().to_owned();
    let projector_role = unique_name("lp_projector");
    let actions_role = unique_name("lp_actions");
    let as_projector = url_as(&owner_url, &projector_role);
    let as_actions = url_as(&owner_url, &actions_role);
    let restricted_projector = |config: &mut ipp_projector::Config| {
        config.database.url = as_projector.parse().expect("url");
        config.migrate = false;
    };
    let restricted_actions = |config: &mut ipp_actions::Config| {
        config.database.url = as_actions.parse().expect("url");
        config.migrate = false;
    };

    // Not migrated yet: a service that must not migrate refuses to start, and says why.
    let mut projector_config = processes.projector_config();
    projector_config.migrate = false;
    let refused = cli::run_async("ipp-projector", &[], &projector_config.env(), WAIT).await;
    assert!(!refused.status.success());
    assert!(
        refused.stderr.contains("lacks migrations")
            && refused.stderr.contains("ipp-projector migrate"),
        "{}",
        refused.stderr
    );
    let mut actions_config = processes.actions_config();
    actions_config.migrate = false;
    let refused = cli::run_async("ipp-actions", &[], &actions_config.env(), WAIT).await;
    assert!(!refused.status.success());
    assert!(
        refused.stderr.contains("lacks migrations")
            && refused.stderr.contains("ipp-actions migrate"),
        "{}",
        refused.stderr
    );

    // The owner migrates and grants; the login roles only join the groups.
    cli::run_async(
        "ipp-projector",
        &["migrate"],
        &processes.projector_config().env(),
        WAIT,
    )
    .await
    .success();
    cli::run_async(
        "ipp-actions",
        &["migrate"],
        &processes.actions_config().env(),
        WAIT,
    )
    .await
    .success();
    let owner = processes.database.pool().await;
    sqlx::raw_sql(GRANTS).execute(&owner).await.expect("grants");
    sqlx::raw_sql(GRANTS)
        .execute(&owner)
        .await
        .expect("the grants run twice");
    for (role, group) in [
        (&projector_role, "ipp_projector_rw"),
        (&actions_role, "ipp_actions_rw"),
    ] {
        sqlx::raw_sql(&format!("CREATE ROLE {role} LOGIN IN ROLE {group}"))
            .execute(&owner)
            .await
            .expect("login role");
    }

    let _ingest = processes.ingest();
    let mut projector = processes.projector_with(restricted_projector);
    let mut actions = processes.actions_with(restricted_actions);
    let order = Uuid::new_v4();
    processes.finalize(MERCHANT, order).await;
    eventually(WAIT, "captured, confirmed and in sync", || async {
        order_row(&owner, order).await.is_some_and(|row| {
            row["reconciliation_state"] == "in_sync"
                && row["capture_ids"].as_array().unwrap().len() == 1
        })
    })
    .await;
    let mut env = processes.actions_config();
    restricted_actions(&mut env);
    let order_id = order.to_string();
    let refund = cli::run_async(
        "ipp-actions",
        &[
            "command",
            "issue",
            "refund",
            &order_id,
            "--amount",
            "300",
            "--wait-secs",
            "60",
            "--json",
        ],
        &env.env(),
        WAIT,
    )
    .await
    .success();
    assert!(refund.stdout.contains("\"succeeded\""), "{}", refund.stdout);
    eventually(WAIT, "the refund confirmed", || async {
        order_row(&owner, order).await.is_some_and(|row| {
            row["reconciliation_state"] == "in_sync" && row["refunded_amount"] == 300
        })
    })
    .await;
    let sessions: i64 = sqlx::query_scalar("SELECT count(*) FROM ipp_sessions WHERE order_id = $1")
        .bind(order)
        .fetch_one(&owner)
        .await
        .unwrap();
    assert_eq!(sessions, 1);
    assert_eq!(processes.sim.captures(&order_id).await, 1);

    // Each service names itself to PostgreSQL.
    let named: Vec<(String, String)> = sqlx::query_as(
        "SELECT DISTINCT usename::text, application_name FROM pg_stat_activity
         WHERE datname = current_database() AND usename IN ($1, $2) ORDER BY 1, 2",
    )
    .bind(&actions_role)
    .bind(&projector_role)
    .fetch_all(&owner)
    .await
    .unwrap();
    assert_eq!(
        named,
        [
            (actions_role.clone(), "ipp-actions".to_owned()),
            (projector_role.clone(), "ipp-projector".to_owned()),
        ]
    );

    // They own nothing: no new tables, no other service's rows, no schema changes.
    for (url, foreign_table) in [
        (&as_projector, "ipp_actions"),
        (&as_actions, "ipp_sessions"),
    ] {
        let mut conn = PgConnection::connect(url)
            .await
            .expect("connect as the role");
        for statement in [
            "CREATE TABLE sneaky (id int)".to_owned(),
            format!("SELECT count(*) FROM {foreign_table}"),
            "ALTER TABLE ipp_events ADD COLUMN sneaky int".to_owned(),
            "DELETE FROM _sqlx_migrations".to_owned(),
        ] {
            let error = sqlx::raw_sql(&statement)
                .execute(&mut conn)
                .await
                .expect_err(&statement);
            assert!(
                error.to_string().contains("permission denied")
                    || error.to_string().contains("must be owner"),
                "{statement}: {error}"
            );
        }
        conn.close().await.ok();
    }

    assert!(projector.is_running(), "ipp-projector died");
    assert!(actions.is_running(), "ipp-actions died");
    projector.signal("TERM");
    actions.signal("TERM");
    assert!(projector.wait(Duration::from_secs(30)).success());
    assert!(actions.wait(Duration::from_secs(30)).success());
    let server = PgPoolOptions::new()
        .max_connections(1)
        .connect(&owner_url)
        .await
        .unwrap();
    for role in [&projector_role, &actions_role] {
        sqlx::raw_sql(&format!("DROP ROLE {role}"))
            .execute(&server)
            .await
            .expect("drop the login role");
    }
}

/// `sslmode=verify-full` with the provider's root certificate: the services connect
/// over TLS (PostgreSQL's `pg_stat_ssl` says so for each), and a server whose
/// certificate another CA signed is refused before anything is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_connect_over_tls_checking_the_servers_certificate() {
    let server = ipp_tests::postgres::PrivatePostgres::start_with_tls();
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect(&server.url("postgres"))
        .await
        .expect("the private server");
    sqlx::raw_sql("CREATE DATABASE ipp_tls")
        .execute(&admin)
        .await
        .unwrap();
    let tls_url = |ca: &std::path::Path| {
        format!(
            "{}?sslmode=verify-full&sslrootcert={}",
            server.url("ipp_tls"),
            ca.display()
        )
    };
    let trusted = tls_url(&server.ca_file());

    // A CA that did not sign the server's certificate: refused, nothing migrated.
    let refused = cli::run_async(
        "ipp-projector",
        &["migrate"],
        &[("DATABASE_URL", tls_url(&server.other_ca_file()))],
        WAIT,
    )
    .await;
    assert!(!refused.status.success(), "{refused:?}");
    assert!(
        refused.stderr.to_lowercase().contains("certificate"),
        "{}",
        refused.stderr
    );

    for binary in ["ipp-projector", "ipp-actions"] {
        cli::run_async(
            binary,
            &["migrate"],
            &[("DATABASE_URL", trusted.clone())],
            WAIT,
        )
        .await
        .success();
    }
    let processes = Processes::start().await;
    let mut projector = processes.projector_with(|c| c.database.url = trusted.parse().unwrap());
    let mut actions = processes.actions_with(|c| c.database.url = trusted.parse().unwrap());
    eventually(WAIT, "both services connected over TLS", || async {
        let encrypted: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT a.application_name FROM pg_stat_activity a
             JOIN pg_stat_ssl s USING (pid)
             WHERE a.datname = 'ipp_tls' AND s.ssl ORDER BY 1",
        )
        .fetch_all(&admin)
        .await
        .unwrap();
        encrypted == ["ipp-actions", "ipp-projector"]
    })
    .await;
    let plain: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
         WHERE a.datname = 'ipp_tls' AND NOT s.ssl",
    )
    .fetch_one(&admin)
    .await
    .unwrap();
    assert_eq!(plain, 0, "no connection in the clear");
    for service in [&mut projector, &mut actions] {
        assert!(service.is_running(), "{} died", service.name);
        service.signal("TERM");
        assert!(service.wait(Duration::from_secs(30)).success());
    }
}
