-- 002_script_events (SQLite): what happened to each operator script as a
-- runtime loaded or hot-reloaded it: 'loaded' (checked and serving from that
-- generation) or 'refused' (the error, file:line; the previous version kept
-- serving). Append-only; `orchestrate status` shows the scripts whose latest
-- event is a refusal.

CREATE TABLE IF NOT EXISTS orch_script_events (
  id          INTEGER PRIMARY KEY,
  rec_key     TEXT UNIQUE,
  runtime     TEXT,
  module      TEXT NOT NULL,
  file        TEXT NOT NULL,
  generation  INTEGER,
  outcome     TEXT NOT NULL CHECK (outcome IN ('loaded', 'refused')),
  error       TEXT,
  created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now'))
);
CREATE INDEX IF NOT EXISTS orch_script_events_file_idx ON orch_script_events (file, id);
