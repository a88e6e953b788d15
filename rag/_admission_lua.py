"""The Redis scripts of ingest admission (rag/jobs.py): each runs atomically on Redis's clock.

Admission has levels: the tenant's own (its quota, when it has one below the global limit) and the global
one. Each level is the same five keys: the jobs it admitted and that have not started (a ZSET scored by
admission), its line of refused submissions, when each of those is due back, the line's sequence, and the
pace at which its jobs start. A submission is admitted only if it fits every level; it is refused by the
first level it does not fit, and waits in that level's line, told the wait at that level's pace. A tenant
at its quota so lines up among its own submissions and never holds back another tenant's.
"""

from __future__ import annotations

# A refused submission takes a place in a line of documents (a ZSET of '{identity}#{i}' per new document,
# scored by arrival), so the documents ahead of it are one ZRANK. Its identity is the idempotency key of its
# first new document, which the client's retries keep, also a retry of part of it. Once a line has formed, a
# newcomer is admitted only when there is room for the whole line as well: the waits told to those in line
# count on the slots that free up meanwhile. Those in line are admitted whenever they come back to room;
# one back early may pass others, who keep their place and are told again.
#
# KEYS: enqueuing, mean job s, then per level (tenant's first, when it has a quota; then global): admitted,
# line, due, line seq, drain; then per document: idempotency key, job key, payload key, staged payload key (the
# bytes, written before the script: one script call carrying every document would hold Redis for all of them).
# ARGV: levels (1 or 2), limit per level (as many), job ttl s, enqueue grace s, job key prefix, line grace s,
# horizon min s, horizon max s, max wait s, jitter in [0, 1), replaced (a '1' or '0' per document: '1' when
# its finished job no longer holds its key, the stored document being another version or gone), then per
# document: job id, job record. A new job's staged payload is renamed to its payload key.
# Returns {admitted (1/0; -1: a document's idempotency key holds a job of other content, its 1-based position
# third), waiting before (at the level that refused, else global), new documents, jobs taken
# over, per document the existing job's record or '' for a new one (empty when refused), retry after s
# (refused), documents ahead in the line, the level that refused (1-based; 0 when admitted)}.
ADMIT = """
local enqueuing, mean_job = KEYS[1], KEYS[2]
local nlevels = tonumber(ARGV[1])
local levels = {}
for l = 1, nlevels do
  local k = 2 + 5 * (l - 1)
  levels[l] = {admitted = KEYS[k + 1], line = KEYS[k + 2], due = KEYS[k + 3], seq = KEYS[k + 4],
               drain = KEYS[k + 5], limit = tonumber(ARGV[1 + l])}
end
local K, a = 2 + 5 * nlevels, 1 + nlevels
local ttl, grace, job_prefix = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), ARGV[a + 3]
local line_grace, horizon_min, horizon_max = tonumber(ARGV[a + 4]), tonumber(ARGV[a + 5]), tonumber(ARGV[a + 6])
local max_wait, jitter, replaced = tonumber(ARGV[a + 7]), tonumber(ARGV[a + 8]), ARGV[a + 9]
local A = a + 9
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1e6
-- At most 10, a bound on what one caller pays for others' crashes; a fresh score claims them, so no
-- other caller takes the same ones over meanwhile.
local stale = redis.call('ZRANGEBYSCORE', enqueuing, '-inf', now - grace, 'LIMIT', 0, 10)
for _, id in ipairs(stale) do redis.call('ZADD', enqueuing, now, id) end

local function leave(level, me)
  redis.call('ZREM', level.due, me)
  local i = 1
  while redis.call('ZREM', level.line, me .. '#' .. i) == 1 do i = i + 1 end
end
for _, level in ipairs(levels) do
  -- A job admitted longer ago than its record lives expired unstarted: its task was lost (a purged queue).
  redis.call('ZREMRANGEBYSCORE', level.admitted, '-inf', now - ttl)
  for _, me in ipairs(redis.call('ZRANGEBYSCORE', level.due, '-inf', now - line_grace, 'LIMIT', 0, 50)) do
    leave(level, me)
  end
end

local found, new = {}, {}
for i = 1, (#KEYS - K) / 4 do
  local holder = redis.call('GET', KEYS[K + 4 * i - 3])
  local record = holder and redis.call('GET', job_prefix .. holder)
  local held = record and cjson.decode(record)
  local state = held and held.state
  -- Neither a failed job nor an expired one holds its key, nor a done one whose document was replaced or
  -- deleted since: this submission takes it over.
  if record and state ~= 'failed' and not (state == 'done' and string.sub(replaced, i, i) == '1') then
    -- A key held for other content: answering with its job would drop this content silently. Checked here,
    -- not before the script, so two submissions racing with one key cannot both pass.
    local hash = held.content_hash or ''
    if hash ~= '' and hash ~= cjson.decode(ARGV[A + 2 * i]).content_hash then
      return {-1, 0, i, stale, {}, 0, 0, 0}
    end
    found[i] = record
  else
    found[i] = ''
    new[#new + 1] = i
  end
end
local global = levels[nlevels]
if #new == 0 then return {1, redis.call('ZCARD', global.admitted), 0, stale, found, 0, 0, 0} end
for l, level in ipairs(levels) do  -- can never fit: takes no place
  if #new > level.limit then return {0, redis.call('ZCARD', level.admitted), #new, stale, {}, 0, 0, l} end
end

local me = KEYS[K + 4 * new[1] - 3]
local places = {}
for l, level in ipairs(levels) do
  local waiting = redis.call('ZCARD', level.admitted)
  local ahead = redis.call('ZRANK', level.line, me .. '#1')
  places[l] = ahead ~= false
  if not places[l] then ahead = redis.call('ZCARD', level.line) end
  if waiting + #new + (places[l] and 0 or ahead) > level.limit then
    if not places[l] then
      local last = redis.call('INCRBY', level.seq, #new)
      for i = 1, #new do redis.call('ZADD', level.line, last - #new + i, me .. '#' .. i) end
    end
    -- Seconds between job starts while jobs wait (the workers' pace, however many there are), at most a
    -- job's run time: one slot is the slowest live workers drain, and a pace measured in an earlier busy
    -- spell may be stale. Nothing measured yet: a job's run time, else a second.
    local pace = redis.call('HMGET', level.drain, 'interval', 'at', 'busy', 'spell')
    local interval = tonumber(pace[1])
    local job_s = tonumber(redis.call('HGET', mean_job, 'mean'))
    if job_s and (not interval or interval > job_s) then interval = job_s end
    interval = math.max(interval or 1.0, 0.001)
    -- No job started, since the oldest waiting job came, for twice as long as a job runs: the workers are
    -- stalled or gone, and the wait grows with the stall, so the line backs off instead of polling.
    local oldest = redis.call('ZRANGE', level.admitted, 0, 0, 'WITHSCORES')[2]
    local since = now - math.max(tonumber(pace[2]) or 0, tonumber(oldest) or now)
    if since > 2 * (job_s or interval) then interval = since end
    -- Slots that must free up before this submission fits: the documents ahead of it take them first.
    local wait = (ahead + #new - (level.limit - waiting)) * interval
    -- How long jobs have waited without a break, as starts tell: how much the pace has been checked lately.
    local spell = pace[3] == '1' and now - (tonumber(pace[4]) or now) or 0
    local horizon = math.min(level.limit * interval, horizon_max, math.max(horizon_min, 2 * spell))
    if wait > horizon then wait = horizon * (1 + math.log(wait / horizon)) end
    local retry = math.max(1, math.min(max_wait, math.ceil(wait + jitter * interval)))
    -- Its places in the lines it already passed are kept while it waits in this one.
    for p = 1, l do
      if places[p] or p == l then redis.call('ZADD', levels[p].due, now + retry, me) end
    end
    return {0, waiting, #new, stale, {}, retry, ahead, l}
  end
end

-- Checked before any write: admitting a job without its payload would fail it on the worker.
for _, i in ipairs(new) do
  if redis.call('EXISTS', KEYS[K + 4 * i]) == 0 then return redis.error_reply('staged payload missing') end
end
for _, i in ipairs(new) do
  local id = ARGV[A + 2 * i - 1]
  redis.call('SET', KEYS[K + 4 * i - 2], ARGV[A + 2 * i], 'EX', ttl)
  redis.call('RENAME', KEYS[K + 4 * i], KEYS[K + 4 * i - 1])
  redis.call('EXPIRE', KEYS[K + 4 * i - 1], ttl)
  redis.call('SET', KEYS[K + 4 * i - 3], id, 'EX', ttl)
  for _, level in ipairs(levels) do redis.call('ZADD', level.admitted, now, id) end
  redis.call('ZADD', enqueuing, now, id)
end
for l, level in ipairs(levels) do
  if places[l] then leave(level, me) end
end
return {1, redis.call('ZCARD', global.admitted) - #new, #new, stale, found, 0, 0, 0}
"""

# KEYS: enqueuing, then per level (tenant's, global): admitted, drain. ARGV: job id, smoothing.
# Returns 1 when the job left the global admitted set now (a start), 0 when it was not there (a redelivery).
STARTED = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1e6
redis.call('ZREM', KEYS[1], ARGV[1])
local function start(admitted, drain)
  if redis.call('ZREM', admitted, ARGV[1]) == 0 then return 0 end
  local at, busy, interval, samples = unpack(redis.call('HMGET', drain, 'at', 'busy', 'interval', 'samples'))
  -- Only after a start that left jobs waiting is the gap to the next start the workers' pace, not a lull.
  if busy == '1' then
    samples = math.min((tonumber(samples) or 0) + 1, 1000)
    local gap = now - tonumber(at)
    local weight = math.max(tonumber(ARGV[2]), 1 / samples)
    interval = interval and (1 - weight) * tonumber(interval) + weight * gap or gap
    redis.call('HSET', drain, 'interval', string.format('%.6f', interval), 'samples', samples)
  end
  local left = redis.call('ZCARD', admitted) > 0
  if left and busy ~= '1' then redis.call('HSET', drain, 'spell', string.format('%.6f', now)) end
  redis.call('HSET', drain, 'at', string.format('%.6f', now), 'busy', left and 1 or 0)
  return 1
end
local started = 0
for k = 2, #KEYS, 2 do started = start(KEYS[k], KEYS[k + 1]) end
return started
"""

# KEYS: job time. ARGV: a job's run time s, smoothing. One script, so concurrent workers' updates all count.
JOB_TIME = """
local mean, samples = unpack(redis.call('HMGET', KEYS[1], 'mean', 'samples'))
samples = math.min((tonumber(samples) or 0) + 1, 1000)
local weight = math.max(tonumber(ARGV[2]), 1 / samples)
local seconds = tonumber(ARGV[1])
mean = mean and (1 - weight) * tonumber(mean) + weight * seconds or seconds
redis.call('HSET', KEYS[1], 'mean', string.format('%.6f', mean), 'samples', samples)
return samples
"""
