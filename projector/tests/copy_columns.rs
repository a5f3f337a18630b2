//! The `COPY` column lists of the write path against the migrations: `COPY` is runtime
//! SQL that no `sqlx::query!` checks, so a renamed, added or retyped column would only
//! show when a batch large enough to be copied arrives.

use ipp_projector::engine::{migrate, EVENT_COLUMNS, SESSION_COLUMNS};
use sqlx::{postgres::PgPoolOptions, Connection, PgConnection};

/// The types `copy::events` encodes, in the order of [`EVENT_COLUMNS`].
const EVENT_TYPES: [&str; 11] = [
    "text",
    "text",
    "text",
    "uuid",
    "uuid",
    "text",
    "timestamp with time zone",
    "timestamp with time zone",
    "integer",
    "bigint",
    "jsonb",
];

/// The types `copy::sessions` encodes, in the order of [`SESSION_COLUMNS`].
const SESSION_TYPES: [&str; 14] = [
    "uuid",
    "text",
    "text",
    "uuid",
    "timestamp with time zone",
    "timestamp with time zone",
    "timestamp with time zone",
    "timestamp with time zone",
    "integer",
    "text",
    "text",
    "timestamp with time zone",
    "integer",
    "ARRAY",
];

#[tokio::test]
async fn copy_column_lists_match_the_migrations() {
    let admin_url = std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let name = format!(
        "ipp_copy_columns_{}_{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    );
    let mut admin = PgConnection::connect(&admin_url).await.expect("connect");
    // Runtime SQL: a database name is an identifier.
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .expect("create the test database");
    let url = match admin_url.rsplit_once('/') {
        Some((server, _)) => format!("{server}/{name}"),
        None => panic!("TEST_DATABASE_URL has no database name: {admin_url}"),
    };

    let checked = check(&url).await;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&mut admin)
        .await
        .expect("drop the test database");
    if let Err(problems) = checked {
        panic!("{problems}");
    }
}

/// Migrates a fresh database and compares the lists with `information_schema.columns`.
async fn check(url: &str) -> Result<(), String> {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    migrate(&pool).await.map_err(|e| format!("migrate: {e}"))?;
    let mut problems = Vec::new();
    for (table, columns, types, not_copied) in [
        ("ipp_events", &EVENT_COLUMNS[..], &EVENT_TYPES[..], &[][..]),
        (
            "ipp_sessions",
            &SESSION_COLUMNS[..],
            &SESSION_TYPES[..],
            &["updated_at"][..],
        ),
    ] {
        let actual: Vec<(String, String)> = sqlx::query!(
            r#"SELECT column_name::text AS "name!", data_type::text AS "data_type!"
             FROM information_schema.columns
             WHERE table_schema = 'public' AND table_name = $1 ORDER BY ordinal_position"#,
            table,
        )
        .fetch_all(&pool)
        .await
        .map_err(|e| format!("columns of {table}: {e}"))?
        .into_iter()
        .map(|c| (c.name, c.data_type))
        .collect();
        if actual.is_empty() {
            problems.push(format!("{table}: no such table after the migrations"));
            continue;
        }
        assert_eq!(columns.len(), types.len(), "{table}: a type per column");
        for (column, expected) in columns.iter().zip(types) {
            match actual.iter().find(|(name, _)| name == column) {
                None => problems.push(format!("{table}.{column}: listed, but no such column")),
                Some((_, found)) if found != expected => problems.push(format!(
                    "{table}.{column}: the COPY writes {expected}, the column is {found}"
                )),
                Some(_) => {}
            }
        }
        for (name, _) in &actual {
            if !columns.contains(&name.as_str()) && !not_copied.contains(&name.as_str()) {
                problems.push(format!("{table}.{name}: a column the COPY list leaves out"));
            }
        }
    }
    pool.close().await;
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n"))
    }
}
