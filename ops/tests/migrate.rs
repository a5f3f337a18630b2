//! A database migrated while `3001_ops.sql` still created `ipp_action_retries` (before
//! that table moved to ipp-actions) keeps migrating: ipp-ops accepts the checksum the
//! earlier file left in `_sqlx_migrations`, and only that one.

use ipp_tests::db::TestDatabase;
use sha2::{Digest, Sha384};
use sqlx::PgPool;

async fn recorded_checksum(pool: &PgPool) -> Vec<u8> {
    sqlx::query_scalar("SELECT checksum FROM _sqlx_migrations WHERE version = 3001")
        .fetch_one(pool)
        .await
        .expect("3001 is applied")
}

async fn record_checksum(pool: &PgPool, hex: &str) {
    sqlx::query("UPDATE _sqlx_migrations SET checksum = decode($1, 'hex') WHERE version = 3001")
        .bind(hex)
        .execute(pool)
        .await
        .expect("set the recorded checksum");
}

#[tokio::test]
async fn the_checksum_of_the_earlier_3001_is_accepted_and_no_other() {
    let database = TestDatabase::create().await;
    let pool = database.pool().await;
    ipp_ops::migrate(&pool)
        .await
        .expect("a fresh database migrates");
    // sqlx records the SHA-384 of the file: the formula the constant was computed with,
    // from the earlier file.
    let current = Sha384::digest(include_bytes!("../migrations/3001_ops.sql")).to_vec();
    assert_eq!(recorded_checksum(&pool).await, current);

    // As a database migrated by the earlier release has it.
    record_checksum(&pool, ipp_ops::OPS_3001_BEFORE_THE_MOVE).await;
    ipp_ops::migrate(&pool)
        .await
        .expect("the earlier 3001 is accepted");
    assert_eq!(
        recorded_checksum(&pool).await,
        current,
        "brought up to date"
    );

    // A 3001 changed in any other way is still refused.
    record_checksum(&pool, "00").await;
    assert!(ipp_ops::migrate(&pool).await.is_err());
    pool.close().await;
}
