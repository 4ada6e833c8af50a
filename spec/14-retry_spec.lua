-- The retry policy (scripts/policies/retry.lua): retry, fall back or fail.
package.path = "scripts/?.lua;" .. package.path
local retry = require "policies.retry"

local function const(x) return function() return x end end
local function decide(t)
  if t.rand == nil then t.rand = const(0.5) end
  return retry.decide(t)
end

describe("the retry policy", function()
  it("retries transport errors", function()
    for _, e in ipairs({ "timeout", "connect", "reset", "parse", "stream" }) do
      assert.equal("retry", decide({ attempt = 1, status = 0, error = e }).action, e)
    end
  end)

  it("retries a 2xx whose body could not be read", function()
    assert.equal("retry", decide({ attempt = 1, status = 200, error = "parse" }).action)
  end)

  it("retries 408, 409, 429 and every 5xx, 529 included", function()
    for _, s in ipairs({ 408, 409, 429, 500, 502, 503, 504, 529, 599 }) do
      assert.equal("retry", decide({ attempt = 1, status = s }).action, s)
    end
  end)

  it("fails other 4xx at once, with the provider's message", function()
    local r = decide({ attempt = 1, status = 400,
      body = '{"error":{"message":"max_tokens is too large","type":"invalid_request_error"}}' })
    assert.same({ action = "fail", reason = "HTTP 400 Bad Request: max_tokens is too large" }, r)
    r = decide({ attempt = 1, status = 401, body = '{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}}' })
    assert.same({ action = "fail", reason = "HTTP 401 Unauthorized: invalid x-api-key" }, r)
    r = decide({ attempt = 1, status = 404, body = "no such model" })
    assert.same({ action = "fail", reason = "HTTP 404 Not Found: no such model" }, r)
    r = decide({ attempt = 1, status = 418 })
    assert.same({ action = "fail", reason = "HTTP 418" }, r)
  end)

  it("redacts a key echoed in the provider's message", function()
    local r = decide({ attempt = 1, status = 401,
      body = '{"error":{"message":"Incorrect API key provided: sk-proj-abcdefghijklmnopqrstuvwxyz0123"}}' })
    assert.equal("HTTP 401 Unauthorized: Incorrect API key provided: [KEY]", r.reason)
  end)

  it("redacts a key that crosses the cut whole, before cutting", function()
    local body = '{"error":{"message":"' .. ("x"):rep(290)
      .. ' sk-proj-abcdefghijklmnopqrstuvwxyz0123"}}'
    local r = decide({ attempt = 1, status = 400, body = body })
    assert.is_nil(r.reason:find("sk-", 1, true))
  end)

  it("gives a reason in UTF-8 for a body that is not, or cut in a character", function()
    local latin1 = decide({ attempt = 1, status = 400, body = "\xe9chec de la requ\xeate" })
    assert.is_not_nil(utf8.len(latin1.reason))
    assert.truthy(latin1.reason:find("\u{FFFD}chec", 1, true))
    local long = decide({ attempt = 1, status = 400,
      body = '{"error":{"message":"' .. ("x"):rep(299) .. ("\u{65E5}"):rep(5) .. '"}}' })
    assert.is_not_nil(utf8.len(long.reason))
    assert.truthy(long.reason:find(("x"):rep(299) .. "...", 1, true))
  end)

  it("cuts a long error body in the reason", function()
    local r = decide({ attempt = 1, status = 400, body = ("x"):rep(5000) })
    assert.is_true(#r.reason < 400)
  end)

  it("does not retry a cancelled request", function()
    assert.equal("fail", decide({ attempt = 1, status = 0, error = "cancelled" }).action)
  end)

  it("backs off exponentially with full jitter", function()
    local base, cap = retry.BASE_DELAY_MS, retry.MAX_DELAY_MS
    for attempt = 1, retry.MAX_ATTEMPTS - 1 do
      local ceiling = math.min(cap, base * 2 ^ (attempt - 1))
      assert.equal(0, decide({ attempt = attempt, status = 503, rand = const(0) }).delay_ms)
      assert.equal(math.floor(ceiling / 2), decide({ attempt = attempt, status = 503 }).delay_ms)
      assert.equal(math.floor(ceiling * 0.999), decide({ attempt = attempt, status = 503,
                                                         rand = const(0.999) }).delay_ms)
    end
  end)

  it("caps the backoff at MAX_DELAY_MS", function()
    assert.equal(retry.MAX_DELAY_MS // 2, retry.backoff_ms(40, const(0.5)))
  end)

  it("honours Retry-After, spread a little above it", function()
    local r = decide({ attempt = 1, status = 429, retry_after_ms = 2000, rand = const(0) })
    assert.same({ action = "retry", delay_ms = 2000 }, r)
    r = decide({ attempt = 1, status = 503, retry_after_ms = 2000, rand = const(0.999) })
    assert.equal("retry", r.action)
    assert.is_true(r.delay_ms >= 2000 and r.delay_ms <= 2000 * (1 + retry.RETRY_AFTER_SPREAD))
  end)

  it("honours Retry-After up to the cap of 60 s", function()
    assert.equal(60000, retry.RETRY_AFTER_CAP_MS)
    local r = decide({ attempt = 1, status = 429, retry_after_ms = 60000, rand = const(0) })
    assert.same({ action = "retry", delay_ms = 60000 }, r)
  end)

  it("falls back at once when Retry-After is over the cap", function()
    local r = decide({ attempt = 1, status = 429, retry_after_ms = 120000 })
    assert.same({ action = "fallback",
                  reason = "HTTP 429: Retry-After 120000 ms is over the cap of 60000 ms" }, r)
  end)

  it("falls back on a 429 whose error code or type says the quota or budget is spent", function()
    local bodies = {
      '{"error":{"message":"You exceeded your current quota","type":"insufficient_quota"}}',
      '{"error":{"message":"You exceeded your current quota","code":"insufficient_quota"}}',
      '{"type":"error","error":{"type":"billing_error","message":"Your credit balance is too low"}}',
      '{"error":{"code":"credit_limit_reached","message":"Out of credits"}}',
      '{"error":{"type" : "budget_exceeded","message":"Monthly budget exceeded"}}',
    }
    for _, b in ipairs(bodies) do
      local r = decide({ attempt = 1, status = 429, body = b })
      assert.equal("fallback", r.action, b)
      assert.matches("^HTTP 429: quota or budget spent", r.reason)
    end
  end)

  it("retries a 429 that is only a rate limit", function()
    local r = decide({ attempt = 1, status = 429, body = '{"error":{"message":"Rate limit reached"}}' })
    assert.equal("retry", r.action)
  end)

  it("retries a rate limit whose message speaks of quota", function()
    local bodies = {
      -- Azure OpenAI: its rate-limit text links the quota page
      '{"error":{"code":"429","message":"Requests to the ChatCompletions_Create Operation have exceeded token rate limit. Please retry after 1 second. Please go here: https://aka.ms/oai/quotaincrease if you would like to further increase the default rate limit."}}',
      -- Gemini
      '{"error":{"code":429,"message":"Resource has been exhausted (e.g. check quota).","status":"RESOURCE_EXHAUSTED"}}',
      '{"error":{"message":"Your credit balance is too low; check billing"}}',
      '{"error":{"message":"say \\"type\\":\\"billing\\" in a message"}}',
    }
    for _, b in ipairs(bodies) do
      assert.equal("retry", decide({ attempt = 1, status = 429, body = b }).action, b)
    end
  end)

  it("retries a 429 after its Retry-After even when the code says quota", function()
    local r = decide({ attempt = 1, status = 429, retry_after_ms = 2000, rand = const(0),
                       body = '{"error":{"type":"insufficient_quota"}}' })
    assert.same({ action = "retry", delay_ms = 2000 }, r)
  end)

  it("falls back after the last attempt", function()
    local r = decide({ attempt = retry.MAX_ATTEMPTS, status = 0, error = "timeout" })
    assert.same({ action = "fallback",
      reason = ("transport error (timeout) after %d attempts"):format(retry.MAX_ATTEMPTS) }, r)
    r = decide({ attempt = retry.MAX_ATTEMPTS + 3, status = 529 })
    assert.equal("fallback", r.action)
  end)

  it("still fails a 4xx at the last attempt", function()
    assert.equal("fail", decide({ attempt = retry.MAX_ATTEMPTS, status = 403 }).action)
  end)

  it("uses the module's random source when no rand is given", function()
    local old = retry.random
    retry.random = const(0)
    finally(function() retry.random = old end)
    assert.equal(0, retry.decide({ attempt = 3, status = 500 }).delay_ms)
  end)

  it("spreads 1,000 steps hit by 429 at once instead of a burst", function()
    math.randomseed(42)
    local delays, distinct, n = {}, {}, 0
    for i = 1, 1000 do
      local d = retry.decide({ attempt = 3, status = 429 }).delay_ms
      delays[i] = d
      if not distinct[d] then distinct[d] = true; n = n + 1 end
    end
    table.sort(delays)
    local ceiling = math.min(retry.MAX_DELAY_MS, retry.BASE_DELAY_MS * 4)
    assert.is_true(n > 500)                       -- few share a millisecond
    assert.is_true(delays[1] < ceiling * 0.05)
    assert.is_true(delays[1000] > ceiling * 0.95)
    assert.is_true(math.abs(delays[500] - ceiling / 2) < ceiling * 0.1)  -- uniform: median mid-way
  end)

  it("spreads 1,000 steps told the same Retry-After", function()
    math.randomseed(43)
    local distinct, n = {}, 0
    for _ = 1, 1000 do
      local d = retry.decide({ attempt = 1, status = 429, retry_after_ms = 1000 }).delay_ms
      assert.is_true(d >= 1000)
      if not distinct[d] then distinct[d] = true; n = n + 1 end
    end
    assert.is_true(n > 50)
  end)

  it("gives the cooldown settings", function()
    local c = retry.cooldown()
    assert.is_true(c.failures >= 1 and c.window_ms > 0 and c.cooldown_ms > 0)
  end)

  it("raises on misuse", function()
    assert.has_error(function() retry.decide({ status = 500 }) end,
      "retry.decide: attempt must be an integer >= 1, got nil")
    assert.has_error(function() retry.decide({ attempt = 0, status = 500 }) end,
      "retry.decide: attempt must be an integer >= 1, got 0")
    assert.has_error(function() retry.decide({ attempt = 1, status = 200 }) end,
      "retry.decide: HTTP 200 without an error is no failure")
    assert.has_error(function() retry.decide({ attempt = 1, status = 429, retry_after_ms = -5 }) end,
      "retry.decide: retry_after_ms must be a number >= 0")
  end)

  it("passes its selftest", function() assert.is_true(retry.selftest()) end)
end)
