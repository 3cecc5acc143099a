-- Proactive refresh. Every connection write stamps next_refresh_at (the due rule of
-- core/schedule_policy, computed by the writer), so "what is due" is one range scan of
-- connections_next_refresh whatever the table size. A scheduler claims due rows with a lease
-- (claimed_by, claim_expires_at) in a short transaction; the flight's own write clears it, and
-- an expired lease (a dead instance) makes the row claimable again.
ALTER TABLE providers ADD COLUMN refresh_rate_per_s integer CHECK (refresh_rate_per_s > 0);

ALTER TABLE connections
  ADD COLUMN next_refresh_at        timestamptz,
  ADD COLUMN refresh_lifetime       integer,      -- seconds the refresh token was issued for
  ADD COLUMN refresh_token_expiring boolean NOT NULL DEFAULT false,  -- a refresh did not renew it
  ADD COLUMN claimed_by             text,
  ADD COLUMN claim_expires_at       timestamptz;

-- Existing rows: the access-token window without jitter, and the keep-alive margin of 7 days
-- (or half the provider's refresh-token lifetime); the first write re-stamps them exactly.
UPDATE connections c
   SET next_refresh_at = least(
         c.access_expires_at - make_interval(secs => least(p.refresh_ahead, c.access_lifetime / 2)),
         c.refresh_expires_at - make_interval(secs => least(604800,
           coalesce(p.refresh_token_lifetime / 2, 604800))))
  FROM providers p
 WHERE p.tenant_id = c.tenant_id AND p.id = c.provider_id
   AND c.status = 'active' AND c.refresh_token_ct IS NOT NULL;

DROP INDEX connections_due;
CREATE INDEX connections_next_refresh ON connections (next_refresh_at)
  WHERE status = 'active' AND next_refresh_at IS NOT NULL;
