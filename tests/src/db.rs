//! A fresh PostgreSQL database per test, dropped when the test ends.

use sqlx::{postgres::PgPoolOptions, Connection, Executor, PgConnection, PgPool};

/// The server the test command points at (`TEST_DATABASE_URL`), e.g.
/// `postgres://postgres@127.0.0.1:5432/postgres`.
pub fn server_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// An empty database with a unique name. Dropped (`WITH (FORCE)`: connections still
/// open are closed) when the guard goes out of scope, also when the test panics; set
/// `IPP_TEST_KEEP_DATABASES=1` to keep them for a post-mortem.
#[derive(Debug)]
pub struct TestDatabase {
    name: String,
    url: String,
}

impl TestDatabase {
    pub async fn create() -> Self {
        let server = server_url();
        let name = crate::unique_name("ipp_test");
        let mut conn = PgConnection::connect(&server)
            .await
            .unwrap_or_else(|e| panic!("connect to {server}: {e}"));
        conn.execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .expect("create database");
        let _ = conn.close().await;
        let (base, _) = server.rsplit_once('/').expect("database url has a path");
        let url = format!("{base}/{name}");
        Self { name, url }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// A small pool on the database, for the test's own queries.
    pub async fn pool(&self) -> PgPool {
        PgPoolOptions::new()
            .max_connections(4)
            .connect(&self.url)
            .await
            .unwrap_or_else(|e| panic!("connect {}: {e}", self.url))
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if std::env::var_os("IPP_TEST_KEEP_DATABASES").is_some() {
            eprintln!("kept test database {}", self.name);
            return;
        }
        let name = self.name.clone();
        // Drop may run inside an async test: the blocking work gets a thread and a
        // runtime of its own.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let mut conn = PgConnection::connect(&server_url()).await?;
                conn.execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
                    .await?;
                conn.close().await
            })
        })
        .join();
        match dropped {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("could not drop test database {}: {e}", self.name),
            Err(_) => eprintln!("dropping test database {} panicked", self.name),
        }
    }
}

/// Creates an empty database with a unique name; see [`TestDatabase`].
pub async fn fresh_database() -> TestDatabase {
    TestDatabase::create().await
}
