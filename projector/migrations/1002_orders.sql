-- The orders read model (decision 0019): facts from ipp.events (the finalized session),
-- kustom.events (Kustom's capture/refund/dispute webhooks) and ipp.observations (our
-- calls' outcomes, Order Management's answers). Every column is merged commutatively
-- and idempotently (the least or the latest by a total order), so any arrival order and
-- any duplicate give the same rows. `ipp_orders`, a view, adds the reconciliation.

-- One row per order.
CREATE TABLE ipp_order_facts (
    order_id                    uuid        PRIMARY KEY,
    -- From the finalized IPP event (the earliest, should there be several).
    session_id                  uuid,
    merchant_id                 text,
    finalized_at                timestamptz,
    finalized_event_id          text,
    -- The latest Order Management read: greatest (read_at, read_id).
    read_at                     timestamptz,
    read_id                     uuid,
    om_status                   text,
    currency                    text,
    authorized_amount           bigint,
    captured_amount             bigint,
    refunded_amount             bigint,
    remaining_authorized_amount bigint,
    updated_at                  timestamptz NOT NULL DEFAULT now()
);

-- One row per capture or refund of an order, whoever made it.
CREATE TABLE ipp_order_operations (
    order_id          uuid        NOT NULL,
    kind              text        NOT NULL CHECK (kind IN ('capture', 'refund')),
    -- Kustom's capture_id or refund_id.
    operation_id      text        NOT NULL,
    -- Ours: the ledger action that made it (the least action key, should two claim it).
    action            text,
    command_id        uuid,
    our_amount        bigint,
    made_at           timestamptz,
    -- Kustom's webhook: the earliest by event time.
    reported_at       timestamptz,
    reported_event_id text,
    -- Order Management reads listing it: the earliest, and the amount of the latest.
    listed_at         timestamptz,
    listed_amount     bigint,
    listed_read_at    timestamptz,
    listed_read_id    uuid,
    PRIMARY KEY (order_id, kind, operation_id)
);

-- One row per dispute: the status of its latest event (by event time, then id).
CREATE TABLE ipp_order_disputes (
    order_id   uuid        NOT NULL,
    dispute_id text        NOT NULL,
    status     text,
    opened_at  timestamptz NOT NULL,
    event_at   timestamptz NOT NULL,
    event_id   text        NOT NULL,
    PRIMARY KEY (order_id, dispute_id)
);

-- The reconciliation's one setting, written by the projector at start
-- (PROJECTOR_ORDERS_CONFIRMATION_TIMEOUT_SECS): the view reads it, so a change needs no
-- rebuild.
CREATE TABLE ipp_orders_settings (
    singleton            boolean  PRIMARY KEY DEFAULT true CHECK (singleton),
    confirmation_timeout interval NOT NULL
);
INSERT INTO ipp_orders_settings (confirmation_timeout) VALUES (interval '10 minutes');

-- One row per order with its amounts and its reconciliation state:
--   mismatch               an amount of ours that Kustom lists differently, an operation
--                          Kustom reports that we did not make, one of ours unconfirmed
--                          after the timeout, or totals that disagree with the ledger;
--   awaiting_confirmation  one of ours not confirmed yet (neither reported by a webhook
--                          nor listed by a read), within the timeout;
--   in_sync                everything else.
CREATE VIEW ipp_orders AS
WITH settings AS (
    SELECT confirmation_timeout FROM ipp_orders_settings
),
ops AS (
    SELECT
        order_id,
        array_agg(operation_id ORDER BY operation_id)
            FILTER (WHERE kind = 'capture') AS capture_ids,
        array_agg(operation_id ORDER BY operation_id)
            FILTER (WHERE kind = 'refund') AS refund_ids,
        coalesce(sum(our_amount) FILTER (WHERE kind = 'capture' AND action IS NOT NULL), 0)::bigint
            AS ledger_captured,
        coalesce(sum(our_amount) FILTER (WHERE kind = 'refund' AND action IS NOT NULL), 0)::bigint
            AS ledger_refunded,
        -- What every known operation adds up to: ours as we made them, the others as listed.
        sum(coalesce(our_amount, listed_amount)) FILTER (WHERE kind = 'capture')::bigint AS known_captured,
        sum(coalesce(our_amount, listed_amount)) FILTER (WHERE kind = 'refund')::bigint AS known_refunded,
        bool_and(action IS NOT NULL OR listed_amount IS NOT NULL) AS all_amounts_known,
        array_agg(kind || ' ' || operation_id ORDER BY kind, operation_id)
            FILTER (WHERE action IS NULL) AS external_operations,
        array_agg(format('%s %s: ours %s, Kustom %s', kind, operation_id, our_amount, listed_amount)
                  ORDER BY kind, operation_id)
            FILTER (WHERE action IS NOT NULL AND listed_amount IS DISTINCT FROM our_amount
                    AND listed_amount IS NOT NULL) AS amount_disagreements,
        array_agg(kind || ' ' || operation_id ORDER BY kind, operation_id)
            FILTER (WHERE action IS NOT NULL AND reported_at IS NULL AND listed_at IS NULL)
            AS unconfirmed_operations,
        min(made_at) FILTER (WHERE action IS NOT NULL AND reported_at IS NULL AND listed_at IS NULL)
            AS oldest_unconfirmed_at,
        max(least(reported_at, listed_at)) AS last_confirmed_at
    FROM ipp_order_operations
    GROUP BY order_id
),
disputes AS (
    SELECT order_id,
           array_agg(dispute_id || ' ' || coalesce(status, 'unknown') ORDER BY dispute_id) AS disputes
    FROM ipp_order_disputes
    GROUP BY order_id
),
orders AS (
    SELECT order_id FROM ipp_order_facts
    UNION SELECT order_id FROM ipp_order_operations
    UNION SELECT order_id FROM ipp_order_disputes
),
joined AS (
    SELECT
        o.order_id,
        f.session_id,
        f.merchant_id,
        f.finalized_at,
        f.currency,
        f.om_status,
        f.authorized_amount,
        f.captured_amount,
        f.refunded_amount,
        f.remaining_authorized_amount,
        f.read_at AS last_read_at,
        coalesce(p.ledger_captured, 0) AS ledger_captured_amount,
        coalesce(p.ledger_refunded, 0) AS ledger_refunded_amount,
        coalesce(p.capture_ids, '{}') AS capture_ids,
        coalesce(p.refund_ids, '{}') AS refund_ids,
        coalesce(p.external_operations, '{}') AS external_operations,
        coalesce(d.disputes, '{}') AS disputes,
        p.last_confirmed_at,
        p.unconfirmed_operations,
        p.oldest_unconfirmed_at,
        p.amount_disagreements,
        p.known_captured,
        p.known_refunded,
        coalesce(p.all_amounts_known, true) AS all_amounts_known,
        s.confirmation_timeout
    FROM orders o
    CROSS JOIN settings s
    LEFT JOIN ipp_order_facts f USING (order_id)
    LEFT JOIN ops p USING (order_id)
    LEFT JOIN disputes d USING (order_id)
),
judged AS (
    SELECT j.*,
        CASE
            WHEN j.amount_disagreements IS NOT NULL
                THEN 'amounts differ: ' || array_to_string(j.amount_disagreements, '; ')
            WHEN j.external_operations <> '{}'
                THEN 'not made by this pipeline: ' || array_to_string(j.external_operations, ', ')
            WHEN j.oldest_unconfirmed_at + j.confirmation_timeout <= now()
                THEN 'not confirmed by Kustom within '
                     || extract(epoch FROM j.confirmation_timeout)::bigint || ' s: '
                     || array_to_string(j.unconfirmed_operations, ', ')
            WHEN j.unconfirmed_operations IS NULL AND j.last_read_at IS NOT NULL
                 AND j.all_amounts_known
                 AND j.captured_amount <> coalesce(j.known_captured, 0)
                THEN format('captured: %s by the known captures, %s by Kustom',
                            coalesce(j.known_captured, 0), j.captured_amount)
            WHEN j.unconfirmed_operations IS NULL AND j.last_read_at IS NOT NULL
                 AND j.all_amounts_known
                 AND j.refunded_amount <> coalesce(j.known_refunded, 0)
                THEN format('refunded: %s by the known refunds, %s by Kustom',
                            coalesce(j.known_refunded, 0), j.refunded_amount)
        END AS mismatch_reason
    FROM joined j
)
SELECT
    order_id,
    session_id,
    merchant_id,
    currency,
    authorized_amount,
    captured_amount,
    refunded_amount,
    remaining_authorized_amount,
    ledger_captured_amount,
    ledger_refunded_amount,
    om_status,
    capture_ids,
    refund_ids,
    external_operations,
    disputes,
    finalized_at,
    last_read_at,
    last_confirmed_at,
    CASE
        WHEN mismatch_reason IS NOT NULL THEN 'mismatch'
        WHEN unconfirmed_operations IS NOT NULL THEN 'awaiting_confirmation'
        ELSE 'in_sync'
    END AS reconciliation_state,
    coalesce(
        mismatch_reason,
        'awaiting Kustom: ' || array_to_string(unconfirmed_operations, ', ')
    ) AS reconciliation_reason
FROM judged;
