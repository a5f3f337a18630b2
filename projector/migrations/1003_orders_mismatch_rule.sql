-- The rule a mismatched order breaks, as a code beside its reason (`mismatch_rule`), so
-- that each reconciliation rule can be counted (the projector's
-- `ipp_projector_order_mismatches{rule}` gauge) and filtered on without parsing text.
-- The view is the same as in 1002 otherwise: its columns keep their order, the new
-- one is last, and the reasons' texts are unchanged.
CREATE OR REPLACE VIEW ipp_orders AS
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
    -- Which rule the order breaks, the first that applies, as a stable code: the
    -- reason's text and the mismatch gauge are derived from it.
    SELECT j.*,
        CASE
            WHEN j.amount_disagreements IS NOT NULL THEN 'amounts_differ'
            WHEN j.external_operations <> '{}' THEN 'not_made_by_this_pipeline'
            WHEN j.oldest_unconfirmed_at + j.confirmation_timeout <= now() THEN 'not_confirmed'
            WHEN j.unconfirmed_operations IS NULL AND j.last_read_at IS NOT NULL
                 AND j.all_amounts_known
                 AND j.captured_amount <> coalesce(j.known_captured, 0)
                THEN 'captured_total_differs'
            WHEN j.unconfirmed_operations IS NULL AND j.last_read_at IS NOT NULL
                 AND j.all_amounts_known
                 AND j.refunded_amount <> coalesce(j.known_refunded, 0)
                THEN 'refunded_total_differs'
        END AS mismatch_rule
    FROM joined j
),
reasoned AS (
    SELECT j.*,
        CASE j.mismatch_rule
            WHEN 'amounts_differ'
                THEN 'amounts differ: ' || array_to_string(j.amount_disagreements, '; ')
            WHEN 'not_made_by_this_pipeline'
                THEN 'not made by this pipeline: ' || array_to_string(j.external_operations, ', ')
            WHEN 'not_confirmed'
                THEN 'not confirmed by Kustom within '
                     || extract(epoch FROM j.confirmation_timeout)::bigint || ' s: '
                     || array_to_string(j.unconfirmed_operations, ', ')
            WHEN 'captured_total_differs'
                THEN format('captured: %s by the known captures, %s by Kustom',
                            coalesce(j.known_captured, 0), j.captured_amount)
            WHEN 'refunded_total_differs'
                THEN format('refunded: %s by the known refunds, %s by Kustom',
                            coalesce(j.known_refunded, 0), j.refunded_amount)
        END AS mismatch_reason
    FROM judged j
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
    ) AS reconciliation_reason,
    mismatch_rule
FROM reasoned;
