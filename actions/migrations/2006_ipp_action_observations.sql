-- The ledger is the outbox of the observations topic (decision 0019): once a row settled
-- (`succeeded`, `failed`, `skipped`), ipp-actions appends its observation to
-- `ipp.observations` and only then sets `published_at`, so a crash in between publishes
-- it again (at least once; the observation id is fixed per row). NULL: not published
-- yet. Rows settled before this migration are NULL too: they are published once, so a
-- rebuild of the orders model sees the history. `ipp-actions retry` clears it again.
ALTER TABLE ipp_actions
    ADD COLUMN IF NOT EXISTS published_at timestamptz,
    -- An `observe` row: what Order Management answered to the read, JSON as it came.
    ADD COLUMN IF NOT EXISTS observation jsonb,
    -- An `observe` row: the type of the Kustom event (`event_id`) that prompted the read.
    ADD COLUMN IF NOT EXISTS event_type text;

-- A new kind: `observe`, the read of an order prompted by a Kustom event
-- (`capture.created`, `refund.created`, `dispute.*`); action `observe:{event_id}`. It moves
-- no money: it waits behind nothing and holds nothing back (see the claim query).
ALTER TABLE ipp_actions DROP CONSTRAINT IF EXISTS ipp_actions_kind_check;
ALTER TABLE ipp_actions ADD CONSTRAINT ipp_actions_kind_check
    CHECK (kind IN ('capture', 'refund', 'cancel', 'release_remaining_authorization', 'observe'));

-- The publisher's query: settled rows not yet published, in the order they settled.
CREATE INDEX IF NOT EXISTS ipp_actions_unpublished ON ipp_actions (updated_at)
    WHERE published_at IS NULL AND status <> 'pending';
