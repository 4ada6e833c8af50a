-- PII and secret scrubbing (scripts/policies/scrub.lua).
package.path = "scripts/?.lua;" .. package.path
local scrub = require "policies.scrub"

local function check(input, want, count)
  local got, n = scrub.scrub(input)
  assert.equal(want, got)
  assert.equal(count, n)
end

describe("the scrubber", function()
  it("redacts e-mail addresses", function()
    check("write to jane.doe+tag@mail.example.co.uk.", "write to [EMAIL].", 1)
    check("a@b.io, c_d@e-f.org", "[EMAIL], [EMAIL]", 2)
  end)

  it("redacts OpenAI and Anthropic keys", function()
    check("OPENAI_API_KEY=sk-proj-AbCdEf0123456789_xyz-QRS", "OPENAI_API_KEY=[KEY]", 1)
    check("key: sk-ant-api03-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAA-BBBB ok", "key: [KEY] ok", 1)
  end)

  it("redacts Bearer tokens, keeping the word", function()
    check("Authorization: Bearer eyJhbGciOi.abc-def_ghi", "Authorization: Bearer [KEY]", 1)
    check("authorization: bearer abcdefgh12345", "authorization: bearer [KEY]", 1)
  end)

  it("redacts other well-known key shapes", function()
    check("ghp_abcdefghijklmnopqrstuvwxyz0123456789", "[KEY]", 1)
    check("AKIAIOSFODNN7EXAMPLE", "[KEY]", 1)
    check("xoxb-123456789012-abcdefghijkl", "[KEY]", 1)
  end)

  it("redacts the values of api_key, secret and password settings", function()
    check('api_key = "q1w2e3r4t5y6u7i8"', 'api_key = "[KEY]"', 1)
    check("x-api-key: 0123456789abcdef", "x-api-key: [KEY]", 1)
    check("password=hunter2hunter2", "password=[KEY]", 1)
  end)

  it("leaves short or embedded look-alikes alone", function()
    check("use sk-learn and task-sk-123", "use sk-learn and task-sk-123", 0)
    check("a bearer of news", "a bearer of news", 0)
    check("password: short", "password: short", 0)
  end)

  it("redacts IPv4 addresses", function()
    check("from 192.168.1.20 and 10.0.0.1.", "from [IP] and [IP].", 2)
    check("host=127.0.0.1:8080", "host=[IP]:8080", 1)
  end)

  it("leaves version numbers and invalid addresses alone", function()
    check("v1.2.3 and 1.2.3.4.5 and 300.1.1.1", "v1.2.3 and 1.2.3.4.5 and 300.1.1.1", 0)
  end)

  it("redacts phone numbers", function()
    check("call +1 (555) 123-4567 now", "call [PHONE] now", 1)
    check("+44 20 7946 0958", "[PHONE]", 1)
    check("+15551234567", "[PHONE]", 1)
    check("(555) 123-4567", "[PHONE]", 1)
    check("555-123-4567 or 555.123.4567", "[PHONE] or [PHONE]", 2)
    check("1-800-555-0199", "[PHONE]", 1)
  end)

  it("leaves dates, timestamps, counts and ids alone", function()
    local s = "On 2024-01-15 10:30 at ts 1700000000, 12345 rows, order #98765, +3 more, 3.14159"
    check(s, s, 0)
  end)

  it("counts every replacement of a mixed text", function()
    local got, n = scrub.scrub("Jane <jane@x.com>, +1 555 123 4567, 8.8.8.8, Bearer abcdefghijk")
    assert.equal("Jane <[EMAIL]>, [PHONE], [IP], Bearer [KEY]", got)
    assert.equal(4, n)
  end)

  it("returns an empty text unchanged", function()
    check("", "", 0)
  end)

  it("is idempotent", function()
    local once = scrub.scrub("sk-ant-api03-AAAAAAAAAAAAAAAAAAAAAAAA bob@x.org 1.2.3.4 +1 555 123 4567")
    check(once, once, 0)
  end)

  it("raises on misuse", function()
    assert.has_error(function() scrub.scrub(nil) end, "scrub.scrub: expected a string, got nil")
  end)

  it("passes its selftest", function() assert.is_true(scrub.selftest()) end)
end)
