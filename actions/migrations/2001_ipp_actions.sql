-- The action ledger of ipp-actions: the source of truth for every call that moves money.
-- One row per (order, action); a finalized event seen again never creates a second row.
CREATE TABLE IF NOT EXISTS ipp_actions (
    order_id             uuid        NOT NULL,
    action               text        NOT NULL,
    session_id           uuid        NOT NULL,
    merchant_id          text,
    event_id             text        NOT NULL,
    status               text        NOT NULL DEFAULT 'pending'
                         CHECK (status IN ('pending', 'succeeded', 'skipped', 'failed')),
    reason               text,
    attempts             integer     NOT NULL DEFAULT 0,
    next_attempt_at      timestamptz NOT NULL DEFAULT now(),
    idempotency_key      uuid        NOT NULL,
    capture_requested_at timestamptz,
    requested_amount     bigint,
    capture_id           text,
    captured_amount      bigint,
    last_status_code     integer,
    last_error           text,
    source_topic         text,
    source_partition     integer,
    source_offset        bigint,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (order_id, action)
);

-- The worker's claim query: due pending rows, oldest first.
CREATE INDEX IF NOT EXISTS ipp_actions_due ON ipp_actions (next_attempt_at) WHERE status = 'pending';
