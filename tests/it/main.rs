//! The black-box suite, one test binary: each module is one area of the pipeline. The
//! harness (fresh topics and databases, in-process services, child processes, the
//! webhook signer) is the `ipp_tests` library in `tests/src`.

mod accounts;
mod actions;
mod alert_rules;
mod bench_smoke;
mod commands;
mod commands_api;
mod db_outage;
mod end_to_end;
mod failover;
mod ingest;
mod ingest_bad_input;
mod ingest_connections;
mod kafka_sasl_ssl;
mod observations;
mod om_sim;
mod om_sim_webhooks;
mod ops_dlq;
mod ops_rebuild;
mod ops_rebuild_orders;
mod ops_replay;
mod ops_status;
mod orders;
mod orders_chain;
mod poison;
mod postgres_roles;
mod projector;
mod prometheus_alerts;
mod rate_limit;
mod secrets;
mod soak;
mod trace_context;
