-- GET /v1/stats counts a tenant's refresh events of the last hour and day: an index on
-- (tenant_id, at) with the outcome keeps that an index-only range scan of one tenant's recent
-- events, however large the table grows.
CREATE INDEX IF NOT EXISTS connection_events_stats ON connection_events (tenant_id, at, outcome);

-- Which API keys read a connection's token (GET /v1/connections/{c}/readers). Aggregated in
-- memory per (key, connection) and merged here in batches; rows go with their connection.
CREATE TABLE connection_readers (
  connection_row_id  bigint NOT NULL REFERENCES connections (row_id) ON DELETE CASCADE,
  tenant_id          text NOT NULL,
  key_id             text NOT NULL,
  reads              bigint NOT NULL CHECK (reads > 0),
  first_read_at      timestamptz NOT NULL,
  last_read_at       timestamptz NOT NULL,
  PRIMARY KEY (connection_row_id, key_id)
);
