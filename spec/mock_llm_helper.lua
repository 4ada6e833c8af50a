-- mock_llm_helper.lua: runs `orchestrate mock-llm` for the specs and talks
-- to it with curl. Not a spec itself.
local cjson = require "cjson"

local H = {}

local bin = os.getenv("ORCH_BIN") or "build/orchestrate"

function H.sh(cmd)
  local f = assert(io.popen(cmd))
  local out = f:read("a")
  f:close()
  return out
end

H.have_curl = H.sh("command -v curl") ~= ""

-- curl without the ASan runtime the sanitizer run preloads into busted (a
-- plain curl under LD_PRELOAD=libasan hangs at start).
local CURL = "env -u LD_PRELOAD curl"
H.curl = CURL

-- Starts the mock on a free port: {pid=, port=, proc=, errfile=}, or nil and
-- the first line it printed.
function H.start()
  local errfile = os.tmpname()
  local proc = assert(io.popen(("sh -c 'echo $$; exec %s mock-llm --port 0 2>%s'")
    :format(bin, errfile)))
  local pid = proc:read("l")
  local line = proc:read("l") or ""
  local port = line:match("listening on http://127%.0%.0%.1:(%d+)")
  if not port then
    os.execute("kill " .. pid .. " 2>/dev/null")
    proc:close()
    os.remove(errfile)
    return nil, line
  end
  return { pid = pid, port = tonumber(port), proc = proc, errfile = errfile }
end

-- Stops it with SIGTERM: ok, how, code (as io.popen's close), stderr text.
function H.stop(m)
  os.execute("kill -TERM " .. m.pid)
  local ok, how, code = m.proc:close()
  local f = io.open(m.errfile)
  local err = f and f:read("a") or ""
  if f then f:close() end
  os.remove(m.errfile)
  return ok, how, code, err
end

-- POSTs a Lua table as JSON: status, body text.
function H.post(m, path, body, headers)
  local tmp = os.tmpname()
  local f = assert(io.open(tmp, "w"))
  f:write(cjson.encode(body))
  f:close()
  local h = ""
  for _, v in ipairs(headers or {}) do h = h .. " -H '" .. v .. "'" end
  local out = H.sh((CURL .. " -s -m 10 -w '\\n%%{http_code}' -H 'Content-Type: application/json'%s --data-binary @%s http://127.0.0.1:%d%s")
    :format(h, tmp, m.port, path))
  os.remove(tmp)
  local text, status = out:match("^(.*)\n(%d+)$")
  return tonumber(status), text
end

-- One user message to the OpenAI API: status, reply text (or error body).
function H.chat(m, prompt, model)
  local status, body = H.post(m, "/v1/chat/completions",
    { model = model or "gpt-x", messages = { { role = "user", content = prompt } } })
  if status ~= 200 then return status, body end
  return status, cjson.decode(body).choices[1].message.content
end

return H
