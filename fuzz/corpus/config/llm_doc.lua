return {
  tiers = {
    fast   = { provider = "openai", base_url = "https://api.openai.com/v1",
               model = "gpt-4o-mini", price_in = 0.15, price_out = 0.60,
               fallback = "local" },
    ["local"] = { provider = "openai", base_url = "http://127.0.0.1:8000/v1",
               model = "qwen2.5-7b-instruct", fallback = "strong" },
    strong = { provider = "anthropic", base_url = "https://api.anthropic.com",
               model = "claude-sonnet-4-5", price_in = 3, price_out = 15,
               api_key_env = "ANTHROPIC_API_KEY" },
  },
  llm = {
    connect_timeout_ms = 10000, -- per attempt
    timeout_ms = 600000,        -- per attempt, total
    idle_timeout_ms = 60000,    -- a stream that sends nothing this long is cut
    max_attempts = 4,           -- per tier, then the fallback tier
    backoff_base_ms = 500, backoff_max_ms = 30000, retry_after_cap_ms = 60000,
    max_tokens = 1024, stream = false, default_tier = "local",
    cooldown = { failures = 5, window_ms = 10000, cooldown_ms = 30000 },
    max_connections = 0, max_host_connections = 0, -- 0: unlimited
    parse_threads = 0,          -- threads parsing whole answers; 0: the loop
  },
}
