//! A fresh PostgreSQL database per test.

use sqlx::{Connection, Executor, PgConnection};

/// The server the test command points at (`TEST_DATABASE_URL`), e.g.
/// `postgres://postgres@127.0.0.1:5432/postgres`.
pub fn server_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// Creates an empty database with a unique name and returns its URL.
pub async fn fresh_database() -> String {
    let server = server_url();
    let name = crate::unique_name("ipp_test");
    let mut conn = PgConnection::connect(&server)
        .await
        .unwrap_or_else(|e| panic!("connect to {server}: {e}"));
    conn.execute(format!("CREATE DATABASE {name}").as_str())
        .await
        .expect("create database");
    let (base, _) = server.rsplit_once('/').expect("database url has a path");
    format!("{base}/{name}")
}
