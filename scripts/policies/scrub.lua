-- policies/scrub.lua: redacts personal data and secrets from text before it
-- is stored or exported: API-key-like tokens -> [KEY], e-mail addresses ->
-- [EMAIL], IPv4 addresses -> [IP], phone numbers -> [PHONE], in that order.
-- scrub(text) -> scrubbed text, number of replacements.

local MIN_KEY_LEN = 20            -- a key-like token shorter than this stays
local KEY_PATTERNS = {            -- Lua patterns of API keys, at a word start
  "sk%-ant%-[%w%-_]+",            -- Anthropic
  "sk%-[%w%-_]+",                 -- OpenAI and compatible (sk-proj-...)
  "gh[pousr]_%w+", "github_pat_[%w_]+",   -- GitHub
  "xox[abprs]%-[%w%-]+",          -- Slack
  "AKIA[%u%d]+",                  -- AWS access key id
  "AIza[%w%-_]+",                 -- Google
  "eyJ[%w%-_]+%.eyJ[%w%-_]+%.[%w%-_]+",   -- JWT
}
local MIN_SECRET_LEN = 8          -- Bearer tokens and "api_key = ..." values
local SECRET_LABELS = { "[Aa][Pp][Ii][_%-]?[Kk][Ee][Yy]", "[Ss][Ee][Cc][Rr][Ee][Tt]",
                        "[Pp][Aa][Ss][Ss][Ww][Oo][Rr][Dd]",
                        "[Aa][Cc][Cc][Ee][Ss][Ss][_%-]?[Tt][Oo][Kk][Ee][Nn]" }
local PHONE_MIN_DIGITS, PHONE_MAX_DIGITS = 8, 15   -- "+..." numbers (E.164)

local M = { MIN_KEY_LEN = MIN_KEY_LEN, KEY_PATTERNS = KEY_PATTERNS,
            MIN_SECRET_LEN = MIN_SECRET_LEN, SECRET_LABELS = SECRET_LABELS,
            PHONE_MIN_DIGITS = PHONE_MIN_DIGITS,
            PHONE_MAX_DIGITS = PHONE_MAX_DIGITS }

local function digits(s) return select(2, s:gsub("%d", "")) end

-- scrub(text) -> text with [KEY] [EMAIL] [IP] [PHONE], count of replacements.
function M.scrub(text)
  if type(text) ~= "string" then
    error("scrub.scrub: expected a string, got " .. type(text), 2)
  end
  local n = 0
  local s = text

  -- Replaces matches of pat for which ok(match, start) holds.
  local function sub(pat, label, ok)
    s = s:gsub("()(" .. pat .. ")", function(at, m)
      if ok and not ok(m, at) then return nil end
      n = n + 1
      return label
    end)
  end
  local function word_start(_, at)
    return at == 1 or not s:sub(at - 1, at - 1):find("[%w_%-]")
  end

  for _, pat in ipairs(M.KEY_PATTERNS) do
    sub(pat, "[KEY]", function(m, at) return #m >= M.MIN_KEY_LEN and word_start(m, at) end)
  end
  s = s:gsub("([Bb]earer%s+)([%w%-%._~%+/]+=*)", function(pre, tok)
    if #tok < M.MIN_SECRET_LEN or tok == "[KEY]" then return nil end
    n = n + 1
    return pre .. "[KEY]"
  end)
  for _, label in ipairs(M.SECRET_LABELS) do
    s = s:gsub("(" .. label .. "[\"']?%s*[:=]%s*[\"']?)([%w%-_%.%+/=]+)", function(pre, v)
      if #v < M.MIN_SECRET_LEN or v == "[KEY]" then return nil end
      n = n + 1
      return pre .. "[KEY]"
    end)
  end

  -- Frontiers make each pattern start only where a run starts, so that a
  -- long run (a base64 blob, a big number) costs linear time, not quadratic.
  if s:find("@", 1, true) then
    sub("%f[%w%.%%%+%-_][%w%.%%%+%-_]+@[%w%-]+%.[%w%.%-]*%a", "[EMAIL]")
  end
  if not s:find("%d") then return s, n end

  sub("%f[%d]%d%d?%d?%.%d%d?%d?%.%d%d?%d?%.%d%d?%d?%f[%D]", "[IP]", function(m, at)
    local before = s:sub(at - 1, at - 1)
    local after = s:sub(at + #m, at + #m + 1)
    if before:find("[%w%.]") or after:find("^%.%d") then return false end
    for octet in m:gmatch("%d+") do
      if tonumber(octet) > 255 then return false end
    end
    return true
  end)

  sub("%+%d[%d%s%-%.%(%)]*%d", "[PHONE]", function(m, at)
    local d = digits(m)
    return d >= M.PHONE_MIN_DIGITS and d <= M.PHONE_MAX_DIGITS
       and (at == 1 or not s:sub(at - 1, at - 1):find("[%w%+]"))
  end)
  sub("%f[%d]1[%s%-%.]%(?%d%d%d%)?[%s%-%.]%d%d%d[%s%-%.]%d%d%d%d%f[%D]", "[PHONE]")
  sub("%(%d%d%d%)%s?%d%d%d[%s%-%.]%d%d%d%d%f[%D]", "[PHONE]")
  sub("%f[%d]%d%d%d[%-%.]%d%d%d[%-%.]%d%d%d%d%f[%D]", "[PHONE]", function(m, at)
    return not s:sub(at - 1, at - 1):find("[%w%.%-]")
  end)
  return s, n
end

function M.selftest()
  local cases = {
    { "mail bob@example.com now", "mail [EMAIL] now", 1 },
    { "key sk-ant-api03-abcdefghijklmnopqrstuvwxyz", "key [KEY]", 1 },
    { "Authorization: Bearer abc.def-ghi_jkl", "Authorization: Bearer [KEY]", 1 },
    { "host 10.0.0.1.", "host [IP].", 1 },
    { "call +1 (555) 123-4567 or 555-123-4567", "call [PHONE] or [PHONE]", 2 },
    { "version 1.2.3 on 2024-01-15, 12345 items", "version 1.2.3 on 2024-01-15, 12345 items", 0 },
  }
  for _, c in ipairs(cases) do
    local got, n = M.scrub(c[1])
    if got ~= c[2] or n ~= c[3] then
      error(("scrub selftest: %q gave %q (%d), expected %q (%d)"):format(
        c[1], got, n, c[2], c[3]))
    end
  end
  return true
end

return M
