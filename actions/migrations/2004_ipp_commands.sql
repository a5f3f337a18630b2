-- Money commands (capture, refund, cancel, release remaining authorization) run through
-- the same ledger as the automatic capture: one row per command, `action` being
-- '{kind}:{command_id}'. An automatic capture keeps action 'capture', kind 'capture',
-- and no command_id.
ALTER TABLE ipp_actions
    ADD COLUMN IF NOT EXISTS kind text NOT NULL DEFAULT 'capture'
        CHECK (kind IN ('capture', 'refund', 'cancel', 'release_remaining_authorization')),
    ADD COLUMN IF NOT EXISTS command_id uuid UNIQUE,
    ADD COLUMN IF NOT EXISTS reference text,
    ADD COLUMN IF NOT EXISTS description text,
    ADD COLUMN IF NOT EXISTS issued_by text,
    ADD COLUMN IF NOT EXISTS refund_id text,
    ADD COLUMN IF NOT EXISTS refunded_amount bigint,
    -- Order Management's `error_code` of the refusal that failed the action.
    ADD COLUMN IF NOT EXISTS error_code text,
    -- The order in which an order's actions were recorded: an action waits while an
    -- earlier one of its order is pending (a refund behind its capture).
    ADD COLUMN IF NOT EXISTS seq bigserial;

-- A command has no session.
ALTER TABLE ipp_actions ALTER COLUMN session_id DROP NOT NULL;

-- The claim query's "is an earlier action of this order still pending?".
CREATE INDEX IF NOT EXISTS ipp_actions_pending_by_order ON ipp_actions (order_id, seq)
    WHERE status = 'pending';

-- What the commands API (and `ipp-actions command issue`) accepted: one row per command
-- appended to the commands topic, so that an Idempotency-Key reused for a different
-- request is refused, and a command can be shown before the consumer recorded it in
-- ipp_actions. `scope` is the API token's name (`cli` for the command line).
CREATE TABLE IF NOT EXISTS ipp_command_requests (
    command_id      uuid        PRIMARY KEY,
    scope           text        NOT NULL,
    idempotency_key text,
    order_id        uuid        NOT NULL,
    kind            text        NOT NULL,
    amount          bigint,
    reference       text,
    description     text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    -- When the broker acknowledged the command; NULL while it is being appended.
    appended_at     timestamptz,
    UNIQUE (scope, idempotency_key)
);

CREATE INDEX IF NOT EXISTS ipp_command_requests_order_idx ON ipp_command_requests (order_id);

-- Every command and its state: the ledger's row once the consumer recorded it, else what
-- the API accepted (`recorded` false, status `pending`).
CREATE OR REPLACE VIEW ipp_commands AS
SELECT a.command_id, a.order_id, a.kind, a.requested_amount AS amount, a.reference,
       a.description, a.issued_by, a.status, true AS recorded, a.attempts, a.capture_id,
       a.captured_amount, a.refund_id, a.refunded_amount, a.error_code, a.reason,
       a.last_error, a.last_status_code, a.created_at, a.updated_at, a.seq
FROM ipp_actions a
WHERE a.command_id IS NOT NULL
UNION ALL
SELECT r.command_id, r.order_id, r.kind, r.amount, r.reference, r.description, r.scope,
       'pending', false, 0, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, r.created_at,
       r.created_at, NULL
FROM ipp_command_requests r
WHERE r.appended_at IS NOT NULL
  AND NOT EXISTS (SELECT 1 FROM ipp_actions a WHERE a.command_id = r.command_id);
