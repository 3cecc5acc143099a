-- Reauthorization: one-time links ops send to the user, the OAuth states their Reconnect
-- buttons mint, and the tenant's allowed return_url origins. Link tokens and states are stored
-- only as SHA-256 hashes; a PKCE verifier is sealed like every other secret.

CREATE TABLE tenant_settings (
  tenant_id           text PRIMARY KEY REFERENCES tenants(id) ON DELETE CASCADE,
  return_url_origins  text[] NOT NULL DEFAULT '{}',
  updated_at          timestamptz NOT NULL DEFAULT now()
);

-- A link repairs (kind 'reauth') or creates (kind 'connect') the connection `connection_id`.
-- Stored status is open, opened, completed, declined, failed or superseded; `expired` is
-- derived (an unfinished link past expires_at). A link stays usable until it is completed,
-- superseded or expired: a declined or failed reconnect can be retried with the same link.
CREATE TABLE reauth_links (
  tenant_id          text NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
  id                 text NOT NULL,
  token_hash         bytea NOT NULL UNIQUE,
  kind               text NOT NULL CHECK (kind IN ('reauth', 'connect')),
  connection_id      text NOT NULL,
  connection_row_id  bigint,            -- the connection repaired; NULL for a connect link
  provider_id        text NOT NULL,
  reason             text NOT NULL CHECK (reason IN ('grant_revoked', 'refresh_token_expired',
                       'lost_rotation', 'scope_changed', 'imported_without_refresh_token',
                       'new_connection')),
  return_url         text,
  status             text NOT NULL DEFAULT 'open' CHECK (status IN
                       ('open', 'opened', 'completed', 'declined', 'failed', 'superseded')),
  last_error         text,              -- why the latest reconnect failed (shown to ops, no secrets)
  request_id         text,
  created_at         timestamptz NOT NULL DEFAULT now(),
  expires_at         timestamptz NOT NULL,
  opened_at          timestamptz,
  started_at         timestamptz,
  completed_at       timestamptz,
  ended_at           timestamptz,       -- declined, failed or superseded at
  PRIMARY KEY (tenant_id, id)
);
CREATE INDEX reauth_links_by_connection
  ON reauth_links (tenant_id, connection_id, created_at DESC);

-- One per Reconnect press: the `state` sent to the authorize endpoint. Valid 15 minutes, used
-- once: the callback claims it (used_at) before the code exchange, and records how it ended.
CREATE TABLE reauth_states (
  state_hash    bytea PRIMARY KEY,
  tenant_id     text NOT NULL,
  link_id       text NOT NULL,
  key_id        text,                   -- seals verifier_ct; NULL without PKCE
  verifier_ct   bytea,
  redirect_uri  text NOT NULL,
  created_at    timestamptz NOT NULL DEFAULT now(),
  expires_at    timestamptz NOT NULL,
  used_at       timestamptz,
  outcome       text CHECK (outcome IN ('completed', 'declined', 'failed')),
  outcome_page  text,                   -- what the callback showed, for a reload of its URL
  FOREIGN KEY (tenant_id, link_id) REFERENCES reauth_links (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX reauth_states_by_link ON reauth_states (tenant_id, link_id);

ALTER TABLE connection_events DROP CONSTRAINT connection_events_outcome_check;
ALTER TABLE connection_events ADD CONSTRAINT connection_events_outcome_check CHECK (outcome IN (
  'refreshed', 'imported', 'reauthorized', 'invalid_grant', 'transient', 'deferred',
  'config_error', 'provider_error', 'in_doubt', 'persist_failed', 'decrypt_failed',
  'refresh_token_expiring', 'reauth_link_created', 'reauth_link_opened', 'reauth_declined',
  'reauth_failed'));
