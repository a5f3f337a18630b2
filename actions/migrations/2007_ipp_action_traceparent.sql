-- The W3C trace context (`traceparent`) of the record an action came from (the finalized
-- event, the command, the Kustom order event), as ingest or the commands API wrote it:
-- every Order Management request of the action is sent as a child span of it, so one
-- payment can be followed from the webhook to the capture. NULL for rows recorded before
-- this migration or from records without one.
ALTER TABLE ipp_actions ADD COLUMN IF NOT EXISTS traceparent text;
