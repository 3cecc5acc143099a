-- The fence: an attempt marker is committed before each provider call and fences its
-- (connection, token_version) until it is closed or expires, on the database clock, at
-- commit + answer timeout + request timeout. It holds even when the session holding the row
-- lock dies mid-call (the lock passes to the next waiter, the marker does not). One marker per
-- flight; `attempt` counts its provider calls, each renewing the expiry.
ALTER TABLE refresh_attempts
  ADD COLUMN attempt integer NOT NULL DEFAULT 1,
  ADD COLUMN expires_at timestamptz;
-- Markers from before the fence: their calls ended long ago (the old call timeout was 10 s).
UPDATE refresh_attempts SET expires_at = started_at + interval '75 seconds';
ALTER TABLE refresh_attempts ALTER COLUMN expires_at SET NOT NULL;
-- Close stale duplicate open markers (only the newest per version may stay open); what they
-- did is in doubt.
UPDATE refresh_attempts a SET state = 'in_doubt', closed_at = now()
 WHERE a.state = 'open'
   AND EXISTS (SELECT 1 FROM refresh_attempts b
                WHERE b.connection_row_id = a.connection_row_id
                  AND b.token_version = a.token_version
                  AND b.state = 'open' AND b.id > a.id);
-- now() cannot appear in an index predicate: expiry is checked by the statements instead.
CREATE UNIQUE INDEX refresh_attempts_one_open ON refresh_attempts (connection_row_id, token_version)
  WHERE state = 'open';
