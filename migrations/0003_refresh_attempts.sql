-- Durable markers of provider calls, committed before each call outside the locking
-- transaction. An attempt left 'open' (the process died) or 'in_doubt' (the answer was lost)
-- at a token_version explains a later invalid_grant as a lost rotation.
CREATE TABLE refresh_attempts (
  id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  tenant_id          text NOT NULL,
  connection_row_id  bigint NOT NULL,
  token_version      bigint NOT NULL,
  state              text NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'done', 'in_doubt', 'failed')),
  instance           text,
  request_id         text,
  started_at         timestamptz NOT NULL DEFAULT now(),
  closed_at          timestamptz
);
CREATE INDEX refresh_attempts_unresolved ON refresh_attempts (connection_row_id, token_version)
  WHERE state IN ('open', 'in_doubt');
