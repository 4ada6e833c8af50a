-- policies/retry.lua: what to do after a failed LLM call: retry after a
-- delay, fall back to the tier's fallback tier, or fail the step.
-- Retryable: transport errors (status 0), 408, 409, 429, 5xx (529 too).
-- Delay: full jitter, uniform in [0, min(MAX_DELAY_MS, BASE_DELAY_MS * 2^(attempt-1))];
-- a Retry-After (ms) is honoured up to RETRY_AFTER_CAP_MS (plus a small
-- spread so that many steps told the same wait do not return in a burst);
-- above the cap, fall back at once. A 429 whose error code or type says
-- the quota or budget is spent (OpenAI's insufficient_quota, billing or
-- credit errors) falls back at once, unless it came with a Retry-After.

local MAX_ATTEMPTS = 4           -- attempts per tier; then fall back
local BASE_DELAY_MS = 500
local MAX_DELAY_MS = 30000       -- cap of the exponential backoff
local RETRY_AFTER_CAP_MS = 60000 -- a longer Retry-After falls back at once
local RETRY_AFTER_SPREAD = 0.1   -- + uniform [0, 10%] of the Retry-After
local RETRY_STATUS = { [408] = true, [409] = true, [429] = true }  -- and 5xx
-- a 429 whose error code or type holds one of these (never its message,
-- and never with a Retry-After) says the quota or budget is spent
local QUOTA_WORDS = { "insufficient_quota", "billing", "credit", "budget" }
local NO_RETRY_ERRORS = { cancelled = true, canceled = true }  -- status 0 kinds
local COOLDOWN = { failures = 5, window_ms = 10000, cooldown_ms = 30000 }

local M = { MAX_ATTEMPTS = MAX_ATTEMPTS, BASE_DELAY_MS = BASE_DELAY_MS,
            MAX_DELAY_MS = MAX_DELAY_MS, RETRY_AFTER_CAP_MS = RETRY_AFTER_CAP_MS,
            RETRY_AFTER_SPREAD = RETRY_AFTER_SPREAD, RETRY_STATUS = RETRY_STATUS,
            QUOTA_WORDS = QUOTA_WORDS, NO_RETRY_ERRORS = NO_RETRY_ERRORS,
            COOLDOWN = COOLDOWN }

-- The source of randomness in [0, 1); a spec may replace it.
M.random = math.random

local scrub = require "policies.scrub"

local REASONS = { [400] = "Bad Request", [401] = "Unauthorized",
                  [403] = "Forbidden", [404] = "Not Found",
                  [413] = "Payload Too Large", [422] = "Unprocessable Entity" }
local MAX_MESSAGE = 300

-- s with U+FFFD for each byte that is not UTF-8 (a Latin-1 or binary body,
-- one cut inside a character): the decision goes back as JSON.
local function utf8_repair(s)
  local out, i = {}, 1
  while i <= #s do
    local n, bad = utf8.len(s, i)
    if n then out[#out + 1] = s:sub(i); break end
    out[#out + 1] = s:sub(i, bad - 1)
    out[#out + 1] = "\u{FFFD}"
    i = bad + 1
  end
  return table.concat(out)
end

-- The provider's message from an error body, without a JSON parser:
-- "message": "..." when there is one, else the body's start; anything
-- key-like, e-mail, IP or phone in it is redacted (policies/scrub.lua)
-- before it is cut, so that a key across the cut is found whole; the cut
-- falls between two characters.
local function message_of(body)
  if type(body) ~= "string" or body == "" then return nil end
  body = body:sub(1, 8 * MAX_MESSAGE)
  local m = body:match('"message"%s*:%s*"(.-)"%s*[,}]')
  if not m then m = body:match('"error"%s*:%s*"(.-)"%s*[,}]') end
  m = utf8_repair(scrub.scrub((m or body):gsub("%s+", " ")))
  if #m > MAX_MESSAGE then
    local n = MAX_MESSAGE
    while n > 0 and (m:byte(n + 1) & 0xC0) == 0x80 do n = n - 1 end
    m = m:sub(1, n) .. "..."
  end
  return m
end

-- The quota word in an error's "code" or "type" value, or nil. Messages do
-- not count: rate-limit texts speak of quota too (Azure links
-- .../quotaincrease, Gemini says "check quota"). llm.c's twin scans the
-- same way.
local function quota_spent(body)
  if type(body) ~= "string" then return nil end
  for key, value in body:gmatch('"(%a+)"%s*:%s*"([^"]*)"') do
    if key == "code" or key == "type" then
      local low = value:lower()
      for _, w in ipairs(M.QUOTA_WORDS) do
        if low:find(w, 1, true) then return w end
      end
    end
  end
  return nil
end

-- The backoff for the attempt that just failed (1-based), full jitter;
-- base and max default to BASE_DELAY_MS and MAX_DELAY_MS.
function M.backoff_ms(attempt, rand, base, max)
  local ceiling = math.min(max or M.MAX_DELAY_MS, (base or M.BASE_DELAY_MS) * 2 ^ (attempt - 1))
  return math.floor((rand or M.random)() * ceiling)
end

-- The numbers in force: the operator's llm settings that the config set
-- (a.limits, from the core), else this script's.
local function limits(a)
  local l = type(a.limits) == "table" and a.limits or {}
  local function num(v, default)
    return (type(v) == "number" and v == v and v >= 0) and v or default
  end
  return { max_attempts = num(l.max_attempts, M.MAX_ATTEMPTS),
           base = num(l.backoff_base_ms, M.BASE_DELAY_MS),
           max = num(l.backoff_max_ms, M.MAX_DELAY_MS),
           cap = num(l.retry_after_cap_ms, M.RETRY_AFTER_CAP_MS) }
end

local function code(n) return tostring(math.tointeger(n) or n) end

local function describe(a)
  if a.status == 0 or a.status == nil then
    return "transport error (" .. tostring(a.error or "unknown") .. ")"
  end
  local s = "HTTP " .. code(a.status)
  local e = a.error and tostring(a.error)
  -- the core's error often says the status already ("HTTP 529: ...")
  if e and e:sub(1, #s + 1) == s .. ":" then return e end
  if e then s = s .. " (" .. e .. ")" end
  return s
end

-- decide{attempt=, status=, error=, retry_after_ms=, body=, rand=, limits=}
--   limits = {max_attempts=, backoff_base_ms=, backoff_max_ms=,
--   retry_after_cap_ms=}: the llm settings the config set, over this
--   script's numbers
--   -> {action="retry", delay_ms=} | {action="fallback", reason=}
--    | {action="fail", reason=}
function M.decide(a)
  if type(a) ~= "table" then error("retry.decide: expected a table", 2) end
  local attempt, status = a.attempt, a.status or 0
  if type(attempt) ~= "number" or attempt < 1 or attempt ~= math.floor(attempt) then
    error("retry.decide: attempt must be an integer >= 1, got " .. tostring(attempt), 2)
  end
  if type(status) ~= "number" then error("retry.decide: status must be a number", 2) end
  local ra = a.retry_after_ms
  if ra ~= nil and (type(ra) ~= "number" or ra ~= ra or ra < 0) then
    error("retry.decide: retry_after_ms must be a number >= 0", 2)
  end
  local rand = a.rand or M.random

  local transport = status == 0 or (status >= 200 and status < 300)
  if transport then
    if status ~= 0 and a.error == nil then
      error("retry.decide: HTTP " .. code(status) .. " without an error is no failure", 2)
    end
    if NO_RETRY_ERRORS[a.error] then
      return { action = "fail", reason = describe(a) }
    end
  elseif status == 429 and ra == nil then
    local w = quota_spent(a.body)
    if w then
      return { action = "fallback",
               reason = ("HTTP 429: quota or budget spent (%q): %s"):format(w, message_of(a.body)) }
    end
  elseif not (M.RETRY_STATUS[status] or (status >= 500 and status < 600)) then
    local reason = "HTTP " .. code(status)
    if REASONS[status] then reason = reason .. " " .. REASONS[status] end
    local msg = message_of(a.body)
    if msg then reason = reason .. ": " .. msg end
    return { action = "fail", reason = reason }
  end

  local lim = limits(a)
  if attempt >= lim.max_attempts then
    return { action = "fallback",
             reason = ("%s after %d attempts"):format(describe(a), attempt) }
  end
  if ra then
    if ra > lim.cap then
      return { action = "fallback",
               reason = ("%s: Retry-After %d ms is over the cap of %d ms"):format(
                 describe(a), math.floor(ra), math.floor(lim.cap)) }
    end
    local spread = M.RETRY_AFTER_SPREAD * math.max(ra, lim.base)
    return { action = "retry", delay_ms = math.floor(ra + rand() * spread) }
  end
  return { action = "retry", delay_ms = M.backoff_ms(attempt, rand, lim.base, lim.max) }
end

-- cooldown() -> {failures=, window_ms=, cooldown_ms=}: an endpoint failing
-- `failures` times within `window_ms` gets no requests for `cooldown_ms`.
function M.cooldown()
  return { failures = M.COOLDOWN.failures, window_ms = M.COOLDOWN.window_ms,
           cooldown_ms = M.COOLDOWN.cooldown_ms }
end

function M.selftest()
  local function check(cond, what) if not cond then error("retry selftest: " .. what, 2) end end
  local one = function() return 0.999999 end
  local zero = function() return 0 end
  local r = M.decide({ attempt = 1, status = 0, error = "timeout", rand = one })
  check(r.action == "retry" and r.delay_ms <= math.min(M.MAX_DELAY_MS, M.BASE_DELAY_MS), "transport")
  r = M.decide({ attempt = 2, status = 503, rand = zero })
  check(r.action == "retry" and r.delay_ms == 0, "5xx")
  r = M.decide({ attempt = 1, status = 429, retry_after_ms = 1000, rand = zero })
  check(r.action == "retry" and r.delay_ms == 1000, "Retry-After")
  r = M.decide({ attempt = 1, status = 429, retry_after_ms = M.RETRY_AFTER_CAP_MS + 1 })
  check(r.action == "fallback", "Retry-After over the cap")
  r = M.decide({ attempt = 1, status = 429, body = '{"error":{"code":"insufficient_quota"}}' })
  check(r.action == "fallback", "quota")
  r = M.decide({ attempt = 1, status = 429, rand = zero,
                 body = '{"error":{"message":"see https://aka.ms/oai/quotaincrease"}}' })
  check(r.action == "retry", "a rate limit that mentions quota")
  r = M.decide({ attempt = 1, status = 429, retry_after_ms = 1000, rand = zero,
                 body = '{"error":{"type":"insufficient_quota"}}' })
  check(r.action == "retry" and r.delay_ms == 1000, "quota with a Retry-After")
  r = M.decide({ attempt = 1, status = 401, body = '{"error":{"message":"bad key"}}' })
  check(r.action == "fail" and r.reason:find("bad key", 1, true), "4xx")
  r = M.decide({ attempt = M.MAX_ATTEMPTS, status = 500 })
  check(r.action == "fallback", "attempts spent")
  r = M.decide({ attempt = 2, status = 500, limits = { max_attempts = 2 } })
  check(r.action == "fallback", "the config's max_attempts")
  r = M.decide({ attempt = 3, status = 500, rand = one,
                 limits = { backoff_base_ms = 10, backoff_max_ms = 20 } })
  check(r.action == "retry" and r.delay_ms <= 20, "the config's backoff")
  return true
end

return M
