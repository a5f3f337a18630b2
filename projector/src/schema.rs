//! Schema-aware connections: the live read model lives in `PROJECTOR_SCHEMA` (default
//! `public`); `rebuild` builds a shadow schema and `replay --into-schema` an analyst's
//! schema with the same tables. Every connection of a pool has its `search_path` set
//! to one schema, so the same unqualified SQL (and the same migrations, with their own
//! `_sqlx_migrations` in that schema) serves all of them.

use ipp_service::DatabaseArgs;
use sqlx::PgPool;

use crate::{store, Error};

/// The tables a rebuild swaps, in the order the live projector locks them.
pub const TABLES: [&str; 3] = ["ipp_projector_offsets", "ipp_events", "ipp_sessions"];

/// The orders model's tables (decision 0019), swapped by a rebuild with the view over
/// them, [`ORDERS_VIEW`]. Locked after [`TABLES`] (the live orders consumer writes only
/// these and the session projector only those) and after the view (see
/// `rebuild::swap::lock_order`).
pub const ORDERS_TABLES: [&str; 4] = [
    "ipp_order_facts",
    "ipp_order_operations",
    "ipp_order_disputes",
    "ipp_orders_settings",
];

/// The view over [`ORDERS_TABLES`]. A view binds its tables by OID, not by name: it must
/// move between schemas with them, or the live `ipp_orders` would go on reading the
/// tables swapped out.
pub const ORDERS_VIEW: &str = "ipp_orders";

/// `tables` of `schema`, qualified, comma-separated, for a `LOCK TABLE`.
pub fn qualified(schema: &str, tables: &[&str]) -> String {
    tables
        .iter()
        .map(|t| format!("{schema}.{t}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether `schema` holds the orders model (its tables and its view).
pub async fn has_orders(pool: &PgPool, schema: &str) -> Result<bool, Error> {
    let mut relations: Vec<&str> = ORDERS_TABLES.to_vec();
    relations.push(ORDERS_VIEW);
    let count = sqlx::query_scalar!(
        r#"SELECT count(*) AS "count!" FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE n.nspname = $1 AND c.relname = ANY($2)"#,
        schema,
        relations.as_slice() as &[&str],
    )
    .fetch_one(pool)
    .await?;
    Ok(count == relations.len() as i64)
}

/// Schema names are plain lowercase identifiers, so they never need quoting.
pub fn validate(name: &str) -> Result<(), Error> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
    let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if first_ok && rest_ok && name.len() <= 63 && !name.starts_with("pg_") {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "schema name `{name}`: use lowercase letters, digits and `_` (not starting with a digit or pg_)"
        )))
    }
}

/// A pool whose connections resolve unqualified names in `schema` only (plus
/// `pg_catalog`). A database that is still starting gets up to 30 seconds.
pub async fn connect(database: &DatabaseArgs, schema: &str) -> Result<PgPool, Error> {
    validate(schema)?;
    Ok(ipp_service::postgres::connect(database, Some(schema)).await?)
}

pub async fn exists(pool: &PgPool, schema: &str) -> Result<bool, Error> {
    Ok(sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1) AS "exists!""#,
        schema,
    )
    .fetch_one(pool)
    .await?)
}

/// Whether `schema` holds the three read-model tables.
pub async fn has_tables(pool: &PgPool, schema: &str) -> Result<bool, Error> {
    let count = sqlx::query_scalar!(
        r#"SELECT count(*) AS "count!" FROM pg_tables WHERE schemaname = $1 AND tablename = ANY($2)"#,
        schema,
        TABLES.as_slice() as &[&str],
    )
    .fetch_one(pool)
    .await?;
    Ok(count == TABLES.len() as i64)
}

/// Creates `schema` when missing and applies the projector's migrations in it (`pool`
/// must be connected with [`connect`] to that schema).
pub async fn prepare(pool: &PgPool, schema: &str) -> Result<(), Error> {
    validate(schema)?;
    if !exists(pool, schema).await? {
        // Runtime SQL: the schema is an identifier (validated above).
        sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
            .execute(pool)
            .await?;
    }
    store::migrate(pool).await
}

/// Checks that `schema` (which `pool` is connected to) holds every migration of this
/// build, for a projector that does not migrate (`PROJECTOR_MIGRATE=false`).
pub async fn require_migrated(pool: &PgPool, schema: &str) -> Result<(), Error> {
    let missing = ipp_service::postgres::unapplied_migrations(pool, &store::migrator()).await?;
    if missing.is_empty() {
        return Ok(());
    }
    Err(Error::Config(format!(
        "schema {schema} lacks migrations {missing:?} of this version and PROJECTOR_MIGRATE \
         is false: run `ipp-projector migrate` as the role that owns the tables first"
    )))
}

#[cfg(test)]
mod tests {
    use super::validate;

    #[test]
    fn schema_names_are_plain_identifiers() {
        for good in ["public", "ipp_rebuild", "analyst_2026", "_x"] {
            assert!(validate(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "Public",
            "1st",
            "a-b",
            "a;drop",
            "pg_temp",
            "a b",
            &"x".repeat(64),
        ] {
            assert!(validate(bad).is_err(), "{bad}");
        }
    }
}
