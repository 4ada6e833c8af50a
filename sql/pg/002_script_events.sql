-- 002_script_events (PostgreSQL): what happened to each operator script as
-- a runtime loaded or hot-reloaded it: 'loaded' (checked and serving from
-- that generation) or 'refused' (the error, file:line; the previous version
-- kept serving). Append-only; `orchestrate status` shows the scripts whose
-- latest event is a refusal, so an operator sees a running runtime's broken
-- reload from another shell.

CREATE TABLE IF NOT EXISTS orch_script_events (
  id          bigserial PRIMARY KEY,
  rec_key     text UNIQUE,
  runtime     text,
  module      text NOT NULL,
  file        text NOT NULL,
  generation  integer,
  outcome     text NOT NULL CHECK (outcome IN ('loaded', 'refused')),
  error       text,
  created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS orch_script_events_file_idx ON orch_script_events (file, id);
