-- helpers.lua: shared by the specs. Runs the CLI, writes temp files.
local M = {}

M.bin = os.getenv("ORCH_BIN") or "build/orchestrate"

function M.sh_quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

-- Runs the orchestrate CLI; returns exit code, stdout, stderr.
function M.cli(args, opts)
  opts = opts or {}
  local errf = os.tmpname()
  local cmd = (opts.env or "") .. " " .. M.bin .. " " .. args .. " 2>" .. errf
  local p = io.popen(cmd .. "; echo \"__EXIT:$?\"")
  local out = p:read("a")
  p:close()
  local code = tonumber(out:match("__EXIT:(%d+)%s*$"))
  out = out:gsub("__EXIT:%d+%s*$", "")
  local f = io.open(errf)
  local err = f:read("a")
  f:close()
  os.remove(errf)
  return code, out, err
end

-- A fresh temporary directory.
function M.tmpdir()
  local p = io.popen("mktemp -d")
  local d = p:read("l")
  p:close()
  return d
end

function M.write(content, suffix)
  local path = os.tmpname() .. (suffix or "")
  local f = assert(io.open(path, "wb"))
  f:write(content)
  f:close()
  return path
end

function M.read(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("a")
  f:close()
  return s
end

function M.json()
  return require("cjson")
end

-- A plan file from a Lua table of steps.
function M.plan(steps, extra)
  local doc = extra or {}
  doc.steps = steps
  return M.write(M.json().encode(doc), ".json")
end

return M
