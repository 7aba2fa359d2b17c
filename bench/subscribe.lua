-- wrk script for bench/web.py: POST the subscribe form as a browser on our own page would
-- (the form has no per-page token: cross-site posts are refused by Origin and
-- Sec-Fetch-Site, so the Origin sent is the server's own), each request with an address of
-- its own (run, thread, counter), so that every one does the whole double opt-in.
local threads = 0
local run = os.getenv("BENCH_RUN") or tostring(os.time())
local origin = os.getenv("BENCH_ORIGIN") or "http://127.0.0.1"

function setup(thread)
  thread:set("thread_number", threads)
  threads = threads + 1
end

local counter = 0

function request()
  counter = counter + 1
  local body = string.format("email=wrk-%s-%d-%d%%40example.com&name=Bench+Reader",
    run, thread_number, counter)
  return wrk.format("POST", "/subscribe", {
    ["Content-Type"] = "application/x-www-form-urlencoded",
    ["Origin"] = origin,
  }, body)
end
