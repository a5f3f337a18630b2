-- Least-privilege roles for the services: two group roles that can read and write the
-- tables their service writes, and nothing else (they own nothing, cannot create or
-- drop tables, cannot read each other's tables).
--
-- Run it as the role that owns the tables, in the services' database, AFTER
-- `ipp-projector migrate` and `ipp-actions migrate`, and again after every upgrade
-- (a release may add tables). It is idempotent. With PROJECTOR_SCHEMA set, run it with
-- that schema first in the search_path (`SET search_path = myschema;`).
--
-- Then give the groups to the services' login roles, and start the services with
-- PROJECTOR_MIGRATE=false and ACTIONS_MIGRATE=false:
--
--   CREATE ROLE ipp_projector_login LOGIN PASSWORD '...' IN ROLE ipp_projector_rw;
--   CREATE ROLE ipp_actions_login   LOGIN PASSWORD '...' IN ROLE ipp_actions_rw;
--
-- The operator commands that change tables (`ipp-projector rebuild`/`replay --schema`,
-- `migrate`) run as the owner. Documented in docs/src/production.md.

DO $$
BEGIN
    CREATE ROLE ipp_projector_rw NOLOGIN;
EXCEPTION WHEN duplicate_object THEN NULL;
END
$$;

DO $$
BEGIN
    CREATE ROLE ipp_actions_rw NOLOGIN;
EXCEPTION WHEN duplicate_object THEN NULL;
END
$$;

DO $$
BEGIN
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO ipp_projector_rw, ipp_actions_rw',
                   current_schema());
END
$$;

-- Both services check at start that their migrations are applied.
GRANT SELECT ON _sqlx_migrations TO ipp_projector_rw, ipp_actions_rw;

-- ipp-projector: the sessions and the orders read models, and its offsets.
GRANT SELECT, INSERT, UPDATE ON
    ipp_events, ipp_sessions, ipp_projector_offsets,
    ipp_order_facts, ipp_order_operations, ipp_order_disputes
    TO ipp_projector_rw;
GRANT SELECT, UPDATE ON ipp_orders_settings TO ipp_projector_rw;
GRANT SELECT ON ipp_orders TO ipp_projector_rw;

-- ipp-actions: the ledger, the commands API's requests, the retries' audit.
GRANT SELECT, INSERT, UPDATE ON ipp_actions, ipp_command_requests TO ipp_actions_rw;
GRANT SELECT, INSERT ON ipp_action_retries TO ipp_actions_rw;
GRANT USAGE ON SEQUENCE ipp_actions_seq_seq, ipp_action_retries_id_seq TO ipp_actions_rw;
GRANT SELECT ON ipp_commands TO ipp_actions_rw;

-- The DLQ redrive audit (created by the first `dlq redrive`): status and redrive read
-- and write it.
DO $$
BEGIN
    IF to_regclass('ipp_dlq_redrives') IS NOT NULL THEN
        GRANT SELECT, INSERT, UPDATE ON ipp_dlq_redrives TO ipp_projector_rw, ipp_actions_rw;
    END IF;
END
$$;
