--workers=2
return {
  workers = 4, max_parallel = 8, plan_max_bytes = 1048576,
  json_max_depth = 32, output_max_bytes = 65536, shell_timeout_ms = 1500.5,
  dry_run_ms = 10, lua_budget = 100, lua_mem_max = 1048576,
  scripts_dir = "scripts",
  store = { url = "sqlite:orchestrate.db" },
  server = {}, policy = {}, providers = {},
}
