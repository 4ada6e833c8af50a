local base = "http://127.0.0.1:8000/v1"
local t = {}
for _, n in ipairs({"a", "b", "c"}) do
  t[n] = { provider = "openai", base_url = base, model = n:upper(),
           fallback = "local", max_tokens = 64, stream = true,
           api_key_env = "KEY_" .. n }
end
t.strong = { provider = "anthropic", price_in = 3, price_out = 15 }
return { tiers = t, llm = { default_tier = "a", parse_threads = 1,
  cooldown = { failures = 2, window_ms = 100, cooldown_ms = 10 } } }
