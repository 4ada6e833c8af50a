-- 001_init (PostgreSQL): the operators' tables (jr_*, magrpo_*), the
-- runtime's own step and LLM-call records, and the active-sessions view.
-- Applied in one transaction by `orchestrate migrate`; orch_schema_migrations
-- is created by the migrator itself. Every table the writer upserts carries
-- rec_seq (the writer's monotonic record sequence): an upsert only replaces a
-- row with an older or equal rec_seq, so spool replays are idempotent and
-- order-independent.

CREATE TABLE IF NOT EXISTS jr_execution_sessions (
  session_id   uuid PRIMARY KEY,
  task_id      text,
  jr_name      text,
  model_tier   text,
  status       text NOT NULL DEFAULT 'pending',
  steps        jsonb NOT NULL DEFAULT '[]'::jsonb,
  total_tokens bigint NOT NULL DEFAULT 0,
  rec_seq      bigint NOT NULL DEFAULT 0,
  created_at   timestamptz NOT NULL DEFAULT now(),
  updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS jr_execution_sessions_status_idx ON jr_execution_sessions (status);
CREATE INDEX IF NOT EXISTS jr_execution_sessions_jr_name_idx ON jr_execution_sessions (jr_name);
CREATE INDEX IF NOT EXISTS jr_execution_sessions_created_idx ON jr_execution_sessions (created_at DESC);

CREATE TABLE IF NOT EXISTS jr_step_rewards (
  id                bigserial PRIMARY KEY,
  task_id           text NOT NULL,
  step_number       integer NOT NULL,
  step_type         text,
  target_file       text,
  step_content_hash char(64),
  execution_result  text NOT NULL DEFAULT 'pending',
  implicit_reward   double precision,
  verified_outcome  double precision,
  retry_decision    text,
  execution_time_ms bigint,
  error_detail      text,
  rec_seq           bigint NOT NULL DEFAULT 0,
  created_at        timestamptz NOT NULL DEFAULT now(),
  updated_at        timestamptz NOT NULL DEFAULT now(),
  UNIQUE (task_id, step_number)
);
CREATE INDEX IF NOT EXISTS jr_step_rewards_task_idx ON jr_step_rewards (task_id);
CREATE INDEX IF NOT EXISTS jr_step_rewards_type_idx ON jr_step_rewards (step_type);
CREATE INDEX IF NOT EXISTS jr_step_rewards_result_idx ON jr_step_rewards (execution_result);

-- rec_key: the writer's unique id for an append-only row (replay-safe).
CREATE TABLE IF NOT EXISTS jr_exploration_log (
  id              bigserial PRIMARY KEY,
  rec_key         text UNIQUE,
  jr_type         text,
  task_type       text,
  novelty_score   double precision,
  curiosity_bonus double precision,
  task_outcome    text,
  created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS jr_exploration_log_type_idx ON jr_exploration_log (jr_type, created_at);

CREATE TABLE IF NOT EXISTS magrpo_task_participation (
  id                      bigserial PRIMARY KEY,
  task_id                 text NOT NULL,
  jr_type                 text NOT NULL,
  joined_at               timestamptz NOT NULL,
  contribution_score      double precision,
  handoff_from            text,
  handoff_to              text,
  context_preserved_score double precision,
  rec_seq                 bigint NOT NULL DEFAULT 0,
  created_at              timestamptz NOT NULL DEFAULT now(),
  UNIQUE (task_id, jr_type, joined_at)
);
CREATE INDEX IF NOT EXISTS magrpo_task_participation_task_idx ON magrpo_task_participation (task_id);
CREATE INDEX IF NOT EXISTS magrpo_task_participation_type_idx ON magrpo_task_participation (jr_type, joined_at);

CREATE TABLE IF NOT EXISTS magrpo_cooperation_metrics (
  id                       bigserial PRIMARY KEY,
  jr_type                  text NOT NULL,
  period_start             timestamptz NOT NULL,
  period_end               timestamptz,
  tasks_participated       integer NOT NULL DEFAULT 0,
  handoffs_sent            integer NOT NULL DEFAULT 0,
  handoffs_received        integer NOT NULL DEFAULT 0,
  avg_context_preservation double precision,
  cooperation_score        double precision,
  group_reward_total       double precision,
  rec_seq                  bigint NOT NULL DEFAULT 0,
  created_at               timestamptz NOT NULL DEFAULT now(),
  UNIQUE (jr_type, period_start)
);

-- The runtime's record of every step of every run: enough to rebuild the
-- graph and skip what already passed (orchestrate run --resume).
CREATE TABLE IF NOT EXISTS orch_run_steps (
  session_id  uuid NOT NULL,
  step_id     text NOT NULL,
  step_index  integer NOT NULL DEFAULT 0,
  kind        text,
  deps        jsonb NOT NULL DEFAULT '[]'::jsonb,
  params      jsonb,
  status      text NOT NULL DEFAULT 'pending',
  attempts    integer NOT NULL DEFAULT 0,
  output      text,
  error       text,
  tokens_in   bigint,
  tokens_out  bigint,
  cost        double precision,
  generation  integer NOT NULL DEFAULT 0,
  started_at  timestamptz,
  finished_at timestamptz,
  rec_seq     bigint NOT NULL DEFAULT 0,
  created_at  timestamptz NOT NULL DEFAULT now(),
  updated_at  timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (session_id, step_id)
);
CREATE INDEX IF NOT EXISTS orch_run_steps_status_idx ON orch_run_steps (status);
CREATE INDEX IF NOT EXISTS orch_run_steps_updated_idx ON orch_run_steps (updated_at);

-- One row per LLM call attempt.
CREATE TABLE IF NOT EXISTS orch_llm_calls (
  session_id  text NOT NULL,
  step_id     text NOT NULL,
  attempt     integer NOT NULL,
  provider    text,
  model       text,
  http_status integer,
  outcome     text,
  tokens_in   bigint,
  tokens_out  bigint,
  cost        double precision,
  latency_ms  double precision,
  error       text,
  started_at  timestamptz,
  rec_seq     bigint NOT NULL DEFAULT 0,
  created_at  timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (session_id, step_id, attempt)
);

CREATE OR REPLACE VIEW v_jr_active_sessions AS
SELECT s.session_id, s.task_id, s.jr_name, s.model_tier, s.status,
       GREATEST(COALESCE(r.total, 0),
                CASE WHEN jsonb_typeof(s.steps) = 'array'
                     THEN jsonb_array_length(s.steps) ELSE 0 END) AS total_steps,
       COALESCE(r.passed, 0) AS passed_steps,
       COALESCE(r.failed, 0) AS failed_steps,
       s.created_at, s.updated_at
  FROM jr_execution_sessions s
  LEFT JOIN (SELECT session_id, count(*) AS total,
                    count(*) FILTER (WHERE status = 'passed') AS passed,
                    count(*) FILTER (WHERE status = 'failed') AS failed
               FROM orch_run_steps GROUP BY session_id) r
    ON r.session_id = s.session_id
 WHERE s.status IN ('pending', 'running');
