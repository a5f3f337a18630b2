-- Claims that a dead worker cannot keep: every claim writes a fresh token, the worker
-- renews it (pushing `next_attempt_at`, the end of its lease, ahead by the database's
-- clock) while the attempt runs, and every write of the attempt's outcome is guarded by
-- it. A worker that died stops renewing, so its actions are due again one short lease
-- later; a stale worker's token no longer matches, so it can never overwrite the new
-- owner's outcome. NULL: nobody holds the action.
ALTER TABLE ipp_actions ADD COLUMN IF NOT EXISTS claim_token uuid;
