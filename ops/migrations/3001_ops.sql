-- Tables of the operator tools (crate ipp-ops, migrations 3001+). ipp-projector (1001+)
-- and ipp-actions (2001+) share `_sqlx_migrations` with these and ignore them.
-- (It also created ipp_action_retries before that table moved to ipp-actions' 2002.)

-- One row per dead-letter record that was redriven: a second `dlq redrive` of the same
-- record finds it here and does nothing (the loop guard's first half; the second is the
-- `dlq-redrive-count` header).
CREATE TABLE IF NOT EXISTS ipp_dlq_redrives (
    dlq_topic        text        NOT NULL,
    dlq_partition    integer     NOT NULL,
    dlq_offset       bigint      NOT NULL,
    redriven_at      timestamptz NOT NULL DEFAULT now(),
    -- 'topic': re-produced to target_topic; 'ledger': an ipp_actions row re-queued.
    target_kind      text        NOT NULL CHECK (target_kind IN ('topic', 'ledger')),
    target_topic     text,
    target_partition integer,
    target_offset    bigint,
    order_id         uuid,
    action           text,
    -- The dlq-redrive-count the redriven copy carries (previous + 1).
    redrive_count    integer     NOT NULL,
    forced           boolean     NOT NULL DEFAULT false,
    PRIMARY KEY (dlq_topic, dlq_partition, dlq_offset)
);

CREATE INDEX IF NOT EXISTS ipp_dlq_redrives_order_idx
    ON ipp_dlq_redrives (order_id, action) WHERE order_id IS NOT NULL;
