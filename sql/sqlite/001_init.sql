-- 001_init (SQLite): the same tables as sql/pg/001_init.sql in SQLite's
-- dialect. uuid, jsonb and timestamptz become TEXT (JSON checked with
-- json() on write, times as 'YYYY-MM-DD HH:MM:SS.SSS' UTC); bigserial is
-- INTEGER PRIMARY KEY.

CREATE TABLE IF NOT EXISTS jr_execution_sessions (
  session_id   TEXT PRIMARY KEY,
  task_id      TEXT,
  jr_name      TEXT,
  model_tier   TEXT,
  status       TEXT NOT NULL DEFAULT 'pending',
  steps        TEXT NOT NULL DEFAULT '[]',
  total_tokens INTEGER NOT NULL DEFAULT 0,
  rec_seq      INTEGER NOT NULL DEFAULT 0,
  created_at   TEXT NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')),
  updated_at   TEXT NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now'))
);
CREATE INDEX IF NOT EXISTS jr_execution_sessions_status_idx ON jr_execution_sessions (status);
CREATE INDEX IF NOT EXISTS jr_execution_sessions_jr_name_idx ON jr_execution_sessions (jr_name);
CREATE INDEX IF NOT EXISTS jr_execution_sessions_created_idx ON jr_execution_sessions (created_at DESC);

CREATE TABLE IF NOT EXISTS jr_step_rewards (
  id                INTEGER PRIMARY KEY,
  task_id           TEXT NOT NULL,
  step_number       INTEGER NOT NULL,
  step_type         TEXT,
  target_file       TEXT,
  step_content_hash TEXT,
  execution_result  TEXT NOT NULL DEFAULT 'pending',
  implicit_reward   REAL,
  verified_outcome  REAL,
  retry_decision    TEXT,
  execution_time_ms INTEGER,
  error_detail      TEXT,
  rec_seq           INTEGER NOT NULL DEFAULT 0,
  created_at        TEXT NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')),
  updated_at        TEXT NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')),
  UNIQUE (task_id, step_number)
);
CREATE INDEX IF NOT EXISTS jr_step_rewards_task_idx ON jr_step_rewards (task_id);
CREATE INDEX IF NOT EXISTS jr_step_rewards_type_idx ON jr_step_rewards (step_type);
CREATE INDEX IF NOT EXISTS jr_step_rewards_result_idx ON jr_step_rewards (execution_result);

CREATE TABLE IF NOT EXISTS jr_exploration_log (
  id              INTEGER PRIMARY KEY,
  rec_key         TEXT UNIQUE,
  jr_type         TEXT,
  task_type       TEXT,
  novelty_score   REAL,
  curiosity_bonus REAL,
  task_outcome    TEXT,
  created_at      TEXT NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now'))
);
CREATE INDEX IF NOT EXISTS jr_exploration_log_type_idx ON jr_exploration_log (jr_type, created_at);

CREATE TABLE IF NOT EXISTS magrpo_task_participation (
  id                      INTEGER PRIMARY KEY,
  task_id                 TEXT NOT NULL,
  jr_type                 TEXT NOT NULL,
  joined_at               TEXT NOT NULL,
  contribution_score      REAL,
  handoff_from            TEXT,
  handoff_to              TEXT,
  context_preserved_score REAL,
  rec_seq                 INTEGER NOT NULL DEFAULT 0,
  created_at              TEXT NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')),
  UNIQUE (task_id, jr_type, joined_at)
);
CREATE INDEX IF NOT EXISTS magrpo_task_participation_task_idx ON magrpo_task_participation (task_id);
CREATE INDEX IF NOT EXISTS magrpo_task_participation_type_idx ON magrpo_task_participation (jr_type, joined_at);

CREATE TABLE IF NOT EXISTS magrpo_cooperation_metrics (
  id                       INTEGER PRIMARY KEY,
  jr_type                  TEXT NOT NULL,
  period_start             TEXT NOT NULL,
  period_end               TEXT,
  tasks_participated       INTEGER NOT NULL DEFAULT 0,
  handoffs_sent            INTEGER NOT NULL DEFAULT 0,
  handoffs_received        INTEGER NOT NULL DEFAULT 0,
  avg_context_preservation REAL,
  cooperation_score        REAL,
  group_reward_total       REAL,
  rec_seq                  INTEGER NOT NULL DEFAULT 0,
  created_at               TEXT NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')),
  UNIQUE (jr_type, period_start)
);

CREATE TABLE IF NOT EXISTS orch_run_steps (
  session_id  TEXT NOT NULL,
  step_id     TEXT NOT NULL,
  step_index  INTEGER NOT NULL DEFAULT 0,
  kind        TEXT,
  deps        TEXT NOT NULL DEFAULT '[]',
  params      TEXT,
  status      TEXT NOT NULL DEFAULT 'pending',
  attempts    INTEGER NOT NULL DEFAULT 0,
  output      TEXT,
  error       TEXT,
  tokens_in   INTEGER,
  tokens_out  INTEGER,
  cost        REAL,
  generation  INTEGER NOT NULL DEFAULT 0,
  started_at  TEXT,
  finished_at TEXT,
  rec_seq     INTEGER NOT NULL DEFAULT 0,
  created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')),
  updated_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')),
  PRIMARY KEY (session_id, step_id)
);
CREATE INDEX IF NOT EXISTS orch_run_steps_status_idx ON orch_run_steps (status);
CREATE INDEX IF NOT EXISTS orch_run_steps_updated_idx ON orch_run_steps (updated_at);

CREATE TABLE IF NOT EXISTS orch_llm_calls (
  session_id  TEXT NOT NULL,
  step_id     TEXT NOT NULL,
  attempt     INTEGER NOT NULL,
  provider    TEXT,
  model       TEXT,
  http_status INTEGER,
  outcome     TEXT,
  tokens_in   INTEGER,
  tokens_out  INTEGER,
  cost        REAL,
  latency_ms  REAL,
  error       TEXT,
  started_at  TEXT,
  rec_seq     INTEGER NOT NULL DEFAULT 0,
  created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')),
  PRIMARY KEY (session_id, step_id, attempt)
);

DROP VIEW IF EXISTS v_jr_active_sessions;
CREATE VIEW v_jr_active_sessions AS
SELECT s.session_id, s.task_id, s.jr_name, s.model_tier, s.status,
       max(COALESCE(r.total, 0),
           CASE WHEN json_valid(s.steps) AND json_type(s.steps) = 'array'
                THEN json_array_length(s.steps) ELSE 0 END) AS total_steps,
       COALESCE(r.passed, 0) AS passed_steps,
       COALESCE(r.failed, 0) AS failed_steps,
       s.created_at, s.updated_at
  FROM jr_execution_sessions s
  LEFT JOIN (SELECT session_id, count(*) AS total,
                    sum(status = 'passed') AS passed,
                    sum(status = 'failed') AS failed
               FROM orch_run_steps GROUP BY session_id) r
    ON r.session_id = s.session_id
 WHERE s.status IN ('pending', 'running');
