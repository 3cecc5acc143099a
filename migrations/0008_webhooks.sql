-- Webhooks: one endpoint per tenant and a transactional outbox of deliveries. A delivery row is
-- written in the same transaction as the state change that causes it (store/webhook_store), so
-- the change and its event commit or roll back together; each instance's worker claims due rows
-- with a lease (claimed_by, claim_expires_at), like the scheduler does connections.

-- The secret is sealed like every other secret, bound to (tenant, row_id, secret_version). For
-- 24 h after a rotation the previous secret is kept (sealed under the same key and version) and
-- deliveries carry a second signature made with it.
CREATE TABLE webhooks (
  tenant_id           text PRIMARY KEY REFERENCES tenants(id) ON DELETE CASCADE,
  row_id              bigserial UNIQUE,   -- a webhook deleted and created again is another one
  url                 text NOT NULL,
  events              text[],             -- NULL: every event type
  key_id              text NOT NULL,
  secret_version      bigint NOT NULL,
  secret_ct           bytea NOT NULL,
  previous_secret_ct  bytea,
  previous_until      timestamptz,
  created_at          timestamptz NOT NULL DEFAULT now(),
  updated_at          timestamptz NOT NULL DEFAULT now()
);

-- One row per event (each tenant has at most one webhook): `id` is the delivery's, `event_id`
-- the payload's `id`, the same on every attempt. `payload` is the exact body signed and sent
-- (no secret, no token). Automatic deliveries (`ordered`) of one connection go out in `seq`
-- order: a later one waits while an earlier one is pending. A manual retry of a failed delivery
-- is not ordered and restarts the retry window (`window_from`).
CREATE TABLE webhook_deliveries (
  seq               bigserial PRIMARY KEY,
  id                text NOT NULL UNIQUE,
  tenant_id         text NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
  webhook_row_id    bigint NOT NULL,
  event_id          text NOT NULL UNIQUE,
  type              text NOT NULL,
  connection_id     text NOT NULL,
  payload           text NOT NULL,
  status            text NOT NULL DEFAULT 'pending'
                      CHECK (status IN ('pending', 'delivered', 'failed', 'cancelled')),
  ordered           boolean NOT NULL DEFAULT true,
  attempts          integer NOT NULL DEFAULT 0,
  last_status       integer,            -- the receiver's HTTP status of the latest attempt
  last_error        text,               -- why the latest attempt failed (no secrets)
  created_at        timestamptz NOT NULL DEFAULT now(),
  window_from       timestamptz NOT NULL DEFAULT now(),
  next_attempt_at   timestamptz NOT NULL DEFAULT now(),
  delivered_at      timestamptz,
  ended_at          timestamptz,        -- failed or cancelled at
  claimed_by        text,
  claim_expires_at  timestamptz
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at)
  WHERE status = 'pending';
CREATE INDEX webhook_deliveries_order ON webhook_deliveries (tenant_id, connection_id, seq)
  WHERE status = 'pending' AND ordered;
CREATE INDEX webhook_deliveries_list ON webhook_deliveries (tenant_id, seq DESC);

-- A failure episode: the first failure since the last success (failing_since), and whether its
-- connection.refresh_failed has been written (at most one per episode). A successful refresh,
-- a reauthorization or a re-import ends the episode.
ALTER TABLE connections
  ADD COLUMN failing_since     timestamptz,
  ADD COLUMN failure_notified  boolean NOT NULL DEFAULT false;
