-- Owned by ipp-actions. Databases migrated before it moved here got it from ipp-ops'
-- 3001, hence IF NOT EXISTS: they keep their rows.
-- Audit of failed actions put back to `pending` by `ipp-actions retry` or by a redrive
-- of their dead-letter record: what the row said before.
CREATE TABLE IF NOT EXISTS ipp_action_retries (
    id                bigserial   PRIMARY KEY,
    order_id          uuid        NOT NULL,
    action            text        NOT NULL,
    retried_at        timestamptz NOT NULL DEFAULT now(),
    via               text        NOT NULL,
    previous_reason   text,
    previous_attempts integer,
    previous_error    text
);

CREATE INDEX IF NOT EXISTS ipp_action_retries_order_idx ON ipp_action_retries (order_id, action);
