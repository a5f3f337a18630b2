-- Read models of ipp-projector. These tables are a public SQL contract: see
-- docs/projector.md before changing a name or a meaning. Projector migrations are
-- numbered 1001+ (ipp-actions uses 2001+) so both can share one `_sqlx_migrations`.

-- One row per distinct Kustom event id, append-only.
CREATE TABLE ipp_events (
    event_id        text        PRIMARY KEY,
    event_type      text        NOT NULL,
    merchant_id     text,
    session_id      uuid        NOT NULL,
    order_id        uuid,
    failure_reason  text,
    occurred_at     timestamptz NOT NULL,
    received_at     timestamptz NOT NULL,
    kafka_partition integer     NOT NULL,
    kafka_offset    bigint      NOT NULL,
    payload         jsonb       NOT NULL
);

CREATE INDEX ipp_events_session_id_idx ON ipp_events (session_id);
CREATE INDEX ipp_events_occurred_at_idx ON ipp_events (occurred_at);

-- One row per session: a pure function of the set of its distinct events.
CREATE TABLE ipp_sessions (
    session_id          uuid        PRIMARY KEY,
    merchant_id         text,
    status              text        NOT NULL
        CHECK (status IN ('created', 'activated', 'finalized', 'cancelled')),
    order_id            uuid,
    created_at          timestamptz,
    activated_at        timestamptz,
    finalized_at        timestamptz,
    cancelled_at        timestamptz,
    failed_attempts     integer     NOT NULL,
    last_failure_reason text,
    last_event_id       text        NOT NULL,
    last_event_at       timestamptz NOT NULL,
    event_count         integer     NOT NULL,
    anomalies           text[]      NOT NULL DEFAULT '{}',
    updated_at          timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX ipp_sessions_merchant_status_idx ON ipp_sessions (merchant_id, status);
CREATE INDEX ipp_sessions_anomalies_idx ON ipp_sessions (session_id) WHERE anomalies <> '{}';

-- Where each consumer group stands: the next offset to apply per partition. Written
-- in the same transaction as the read models, so it is exactly what they contain.
CREATE TABLE ipp_projector_offsets (
    consumer_group text    NOT NULL,
    topic          text    NOT NULL,
    partition      integer NOT NULL,
    next_offset    bigint  NOT NULL,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, topic, partition)
);
