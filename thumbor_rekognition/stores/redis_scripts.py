"""The Lua scripts of the Redis store: sorted maps kept in chunks, each run within one slot.

A map (the decisions of a partition, one of its status indexes, a partition of the
content-hash index) keeps its entries sorted by key in strings of at most CHUNK_BYTES,
each entry written as its key and value behind their lengths. A sorted set of the
chunks' lower bounds finds the chunk of a key. Thousands of entries then cost one
Redis key per chunk instead of Redis's per-key and per-member overhead (about 60 and
100 bytes), and keys come back in order for listing.

Every script gets the partition's key prefix (``<prefix>{<tag>}``) as ARGV[1] and one of
its keys as KEYS[1], so that Redis Cluster runs it on the node holding the partition's
slot; it touches no key outside that partition.
"""

from __future__ import annotations

# A chunk past this size is split in two. Smaller chunks cost more sorted-set members per
# entry; larger ones copy more bytes on each write (and to the AOF and replicas).
CHUNK_BYTES = 4096
# Chunks a listing call reads at most before answering: bounds the time one script holds
# Redis. The caller asks again from where it stopped.
CHUNKS_PER_CALL = 32

_LIBRARY = """
local B = ARGV[1]
local CHUNK_BYTES = %(chunk_bytes)d
local STATUSES = {[0] = 'approved', [1] = 'rejected', [2] = 'pending', [3] = 'other'}
-- 3: spelt out in the record, which only 'bank' is today (records._SOURCE).
local SOURCES = {[0] = 'auto', [1] = 'manual', [2] = 'duplicate', [3] = 'bank'}

local function uvarint(s, pos)
  local result, scale = 0, 1
  while true do
    local b = string.byte(s, pos)
    pos = pos + 1
    if b < 128 then return result + b * scale, pos end
    result = result + (b - 128) * scale
    scale = scale * 128
  end
end

local function varint(n)
  local out = ''
  while n > 127 do
    out = out .. string.char(n %% 128 + 128)
    n = math.floor(n / 128)
  end
  return out .. string.char(n)
end

local function item(s) return varint(#s) .. s end

local function items(s)
  local out, pos = {}, 1
  while pos <= #s do
    local len
    len, pos = uvarint(s, pos)
    out[#out + 1] = string.sub(s, pos, pos + len - 1)
    pos = pos + len
  end
  return out
end

-- Where each entry of a chunk starts, and where its key and value are.
local function parse(chunk)
  local p = {chunk = chunk, n = 0, es = {}, ks = {}, kl = {}, vs = {}, vl = {}}
  local pos, n, size = 1, 0, #chunk
  while pos <= size do
    n = n + 1
    p.es[n] = pos
    local len
    len, pos = uvarint(chunk, pos)
    p.ks[n], p.kl[n] = pos, len
    pos = pos + len
    len, pos = uvarint(chunk, pos)
    p.vs[n], p.vl[n] = pos, len
    pos = pos + len
  end
  p.n = n
  p.es[n + 1] = size + 1
  return p
end

local function key_at(p, i) return string.sub(p.chunk, p.ks[i], p.ks[i] + p.kl[i] - 1) end
local function value_at(p, i) return string.sub(p.chunk, p.vs[i], p.vs[i] + p.vl[i] - 1) end

-- Byte order, as Redis orders sorted-set members; Lua's '<' follows the locale.
local function compare(a, b)
  if a == b then return 0 end
  for i = 1, math.min(#a, #b) do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x < y and -1 or 1 end
  end
  return #a < #b and -1 or 1
end

-- The first entry whose key is not below k (p.n + 1 if none), and whether it is k.
local function seek(p, k)
  local lo, hi = 1, p.n + 1
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if compare(key_at(p, mid), k) < 0 then lo = mid + 1 else hi = mid end
  end
  return lo, lo <= p.n and key_at(p, lo) == k
end

local function routing(m) return B .. 'r' .. m end
local function chunk_name(m, bound) return B .. 'c' .. m .. ':' .. bound end

-- The lower bound of the chunk that holds k, nil when no chunk can.
local function locate(m, k)
  return redis.call('ZREVRANGEBYLEX', routing(m), '[' .. k, '-', 'LIMIT', 0, 1)[1]
end

local function load(m, bound)
  return parse(redis.call('GET', chunk_name(m, bound)) or '')
end

local function map_get(m, k)
  local bound = locate(m, k)
  if not bound then return nil end
  local p = load(m, bound)
  local i, found = seek(p, k)
  if found then return value_at(p, i) end
  return nil
end

-- Put k (v a string) or remove it (v nil); a chunk grown past CHUNK_BYTES is split in two
-- halves of about the same size.
local function map_set(m, k, v)
  local bound = locate(m, k)
  if not bound then
    if v == nil then return end
    bound = ''
    redis.call('ZADD', routing(m), 0, bound)
  end
  local p = load(m, bound)
  local i, found = seek(p, k)
  if v == nil and not found then return end
  local entry = v and (item(k) .. item(v)) or ''
  local rest = found and p.es[i + 1] or p.es[i]
  local chunk = string.sub(p.chunk, 1, p.es[i] - 1) .. entry .. string.sub(p.chunk, rest)
  if #chunk > CHUNK_BYTES then
    local q = parse(chunk)
    local middle = 2
    while middle < q.n and q.es[middle] - 1 < #chunk / 2 do middle = middle + 1 end
    if middle <= q.n then
      local upper = key_at(q, middle)
      redis.call('SET', chunk_name(m, upper), string.sub(chunk, q.es[middle]))
      redis.call('ZADD', routing(m), 0, upper)
      chunk = string.sub(chunk, 1, q.es[middle] - 1)
    end
  end
  if chunk == '' then
    redis.call('DEL', chunk_name(m, bound))
    redis.call('ZREM', routing(m), bound)
  else
    redis.call('SET', chunk_name(m, bound), chunk)
  end
end

-- Up to `limit` entries that accept(k, v) turns into a value, in key order, after `after`
-- (from the first key when nil; `after` itself too when inclusive), while keys start with
-- `prefix`, reading at most `budget` chunks. Answers {done, last key read, k1, v1, ...}:
-- done is 1 when no entry is left past the last one read.
local function map_range(m, after, inclusive, prefix, limit, budget, accept)
  local bounds
  local first = after and locate(m, after)
  if first then
    bounds = redis.call('ZRANGEBYLEX', routing(m), '[' .. first, '+', 'LIMIT', 0, budget + 1)
  else
    bounds = redis.call('ZRANGEBYLEX', routing(m), '-', '+', 'LIMIT', 0, budget + 1)
  end
  local out, last, taken = {0, after or ''}, after or '', 0
  for c = 1, math.min(#bounds, budget) do
    local p = load(m, bounds[c])
    local i = 1
    if after then
      local j, found = seek(p, after)
      i = (found and not inclusive) and j + 1 or j
    end
    while i <= p.n do
      local k = key_at(p, i)
      if prefix ~= '' and string.sub(k, 1, #prefix) ~= prefix then
        out[1], out[2] = 1, last
        return out
      end
      last = k
      local v = accept(k, value_at(p, i))
      if v then
        out[#out + 1] = k
        out[#out + 1] = v
        taken = taken + 1
        if taken >= limit then
          out[1] = (i == p.n and c == #bounds) and 1 or 0
          out[2] = last
          return out
        end
      end
      i = i + 1
    end
  end
  out[1] = #bounds <= budget and 1 or 0
  out[2] = last
  return out
end

-- A decision's entry: its record ('' once forgotten), its history, its recorded paths.
local function sections(v)
  local parts = items(v or '')
  return parts[1] or '', parts[2] or '', parts[3] or ''
end

local function entry(rec, hist, paths)
  if paths ~= '' then return item(rec) .. item(hist) .. item(paths) end
  if hist ~= '' then return item(rec) .. item(hist) end
  if rec ~= '' then return item(rec) end
  return nil
end

-- The flags byte of a record: bits 0-1 status, 2-3 source, 4 a raw SHA-256 follows.
local function status_of(rec) return string.byte(rec, 1) %% 4 end
local function source_of(rec) return math.floor(string.byte(rec, 1) / 4) %% 4 end
local function sha_of(rec)
  if math.floor(string.byte(rec, 1) / 16) %% 2 == 1 then return string.sub(rec, 2, 33) end
  return ''
end

local function tally(rec, delta)
  if rec == '' then return end
  local name = STATUSES[status_of(rec)] .. '.' .. SOURCES[source_of(rec)]
  redis.call('HINCRBY', B .. 'n', name, delta)
end

-- Decisions that are not approved are also listed in an index of their status.
local function index_of(rec)
  if rec == '' or status_of(rec) == 0 then return nil end
  return 'x' .. status_of(rec)
end

-- An outbox item of this partition (its outbox is in the partition's slot, so that a
-- change and its announcements are one write): a queue per topic and key, the heads
-- of the queues due per topic, the topics known, counts per topic.
local function enqueue(topic, k, payload, now)
  local o = B .. 'ob:'
  local id = tostring(redis.call('INCR', o .. 'seq'))
  redis.call('HSET', o .. 'i:' .. id, 'topic', topic, 'key', k, 'payload', payload,
    'attempts', 0, 'created_at', now)
  -- Only the head of a queue is due: the next one becomes due when it is done, so that
  -- items queued behind a failing one never crowd the others out of a claim.
  if redis.call('RPUSH', o .. 'q:' .. topic .. ':' .. k, id) == 1 then
    redis.call('ZADD', o .. 'due:' .. topic, now, id)
  end
  redis.call('SADD', o .. 'topics', topic)
  redis.call('HINCRBY', o .. 'counts', topic .. '.pending', 1)
end

-- The outbox entries given as ARGV[first], ARGV[first + 1] ... (topic, payload pairs).
local function enqueue_all(k, first, now)
  for i = first, #ARGV - 1, 2 do enqueue(ARGV[i], k, ARGV[i + 1], now) end
end

local function reindex(k, old, new)
  local before, after = index_of(old), index_of(new)
  if before == after then return end
  if before then map_set(before, k, nil) end
  if after then map_set(after, k, '') end
end

-- Decisions that are not approved are listed by time too: in 't<status>', keyed by the
-- time code of their last change (stores.time_code, 16 digits, given by the writer, who
-- reads the record) followed by their key.
local TIME_CODE = 16
local function timed_of(rec)
  if rec == '' or status_of(rec) == 0 then return nil end
  return 't' .. status_of(rec)
end

local function retime(k, old, new, old_code, new_code)
  local before, after = timed_of(old), timed_of(new)
  if before == after and old_code == new_code then return end
  if before then map_set(before, old_code .. k, nil) end
  if after then map_set(after, new_code .. k, '') end
end
"""


def _script(body: str) -> str:
    return (_LIBRARY % {"chunk_bytes": CHUNK_BYTES}) + body


# ARGV: prefix, key -> the record, or nil.
GET = _script("""
local rec = sections(map_get('d', ARGV[2]))
if rec == '' then return false end
return rec
""")

# ARGV: prefix, key, record, event, the record and the paths the writer read ('' for
# none), channel, message, now, the time codes of the record read and of the new one ('' for
# none), then the outbox entries (topic, payload ...). -> {1, previous
# record or ''} once saved with its entries; {0, record found, paths found} when the key's
# record or paths are no longer the ones read (compare-and-set: the writer settles again).
SAVE = _script("""
local key, rec = ARGV[2], ARGV[3]
local old, hist, paths = sections(map_get('d', key))
if old ~= ARGV[5] or paths ~= ARGV[6] then
  return {0, old, paths}
end
tally(old, -1)
tally(rec, 1)
reindex(key, old, rec)
retime(key, old, rec, ARGV[10], ARGV[11])
map_set('d', key, entry(rec, hist .. item(ARGV[4]), paths))
enqueue_all(key, 12, ARGV[9])
redis.call('PUBLISH', ARGV[7], ARGV[8])
return {1, old}
""")

# ARGV: prefix, key, event, the record and the paths the writer read, channel, message,
# now, the time code of the record read, '' (where a save has the new record's), then the
# outbox entries. -> {1, forgotten record} once forgotten with its entries,
# {1, ''} when there was nothing to forget, {0, record found, paths found} when the key's
# record or paths are no longer the ones read.
DELETE = _script("""
local key = ARGV[2]
local old, hist, paths = sections(map_get('d', key))
if old ~= ARGV[4] or paths ~= ARGV[5] then
  return {0, old, paths}
end
if old == '' then return {1, ''} end
tally(old, -1)
reindex(key, old, '')
retime(key, old, '', ARGV[9], '')
map_set('d', key, entry('', hist .. item(ARGV[3]), paths))
enqueue_all(key, 11, ARGV[8])
redis.call('PUBLISH', ARGV[6], ARGV[7])
return {1, old}
""")

# ARGV: prefix, now, then the outbox entries (topic, key, payload ...) -> 1.
ENQUEUE = _script("""
for i = 3, #ARGV - 2, 3 do enqueue(ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[2]) end
return 1
""")

# ARGV: prefix, key -> {record, history, paths} ('' for each that is missing).
ENTRY = _script("""
local rec, hist, paths = sections(map_get('d', ARGV[2]))
return {rec, hist, paths}
""")

# ARGV: prefix, key, encoded path... -> recorded paths, in the order first recorded.
ADD_PATHS = _script("""
local key = ARGV[2]
local rec, hist, paths = sections(map_get('d', key))
local known = {}
for _, path in ipairs(items(paths)) do known[path] = true end
local added = {}
for i = 3, #ARGV do
  if not known[ARGV[i]] then
    known[ARGV[i]] = true
    added[#added + 1] = item(ARGV[i])
  end
end
if #added > 0 then map_set('d', key, entry(rec, hist, paths .. table.concat(added))) end
return #added
""")

# ARGV: prefix, key.
DROP_PATHS = _script("""
local key = ARGV[2]
local rec, hist, paths = sections(map_get('d', key))
if paths ~= '' then map_set('d', key, entry(rec, hist, '')) end
return 1
""")

# ARGV: prefix, map ('d', a status index or a status's index by time), status number or '',
# after, '1' when there is an after, limit, budget -> {done, last key read, key1, record1,
# ...}: the keys of the map read (time code and key, in an index by time).
PAGE = _script("""
local m, wanted = ARGV[2], tonumber(ARGV[3])
local skip = string.sub(m, 1, 1) == 't' and TIME_CODE or 0
local after = ARGV[5] == '1' and ARGV[4] or nil
local accept
if m == 'd' then
  accept = function(k, v)
    local rec = sections(v)
    if rec == '' or (wanted and status_of(rec) ~= wanted) then return nil end
    return rec
  end
else
  accept = function(k, v)
    local rec = sections(map_get('d', string.sub(k, skip + 1)))
    if rec == '' or (wanted and status_of(rec) ~= wanted) then return nil end
    return rec
  end
end
return map_range(m, after, false, '', tonumber(ARGV[6]), tonumber(ARGV[7]), accept)
""")

# ARGV: prefix, key -> 1 (an entry of the content-hash index: hash prefix and key).
INDEX_ADD = _script("""
map_set('h', ARGV[2], '')
return 1
""")

# ARGV: prefix, key.
INDEX_REMOVE = _script("""
map_set('h', ARGV[2], nil)
return 1
""")

# ARGV: prefix, hash prefix, the last entry read before ('' for none), budget ->
# {done, last, entry1, '', ...}: the index entries starting with the hash prefix.
INDEX_FIND = _script("""
local accept = function(k, v) return '' end
local first = ARGV[3] == ''
local after = first and ARGV[2] or ARGV[3]
return map_range('h', after, first, ARGV[2], 1000000, tonumber(ARGV[4]), accept)
""")

# ARGV: prefix, key, record, history, paths, the record's time code -> 1 when written, 0
# when the key already has an entry (a whole entry of old data moved in; newer data wins).
IMPORT = _script("""
local key, rec = ARGV[2], ARGV[3]
if map_get('d', key) then return 0 end
tally(rec, 1)
reindex(key, '', rec)
retime(key, '', rec, '', ARGV[6])
map_set('d', key, entry(rec, ARGV[4], ARGV[5]))
return 1
""")

# ARGV: prefix, then (key, record, its time code) ... -> how many entries were added: each
# decision still as read (a save since has listed its own) gets its entry in its status's
# index by time, if it has none (decisions saved before that index existed).
TIME_ADD = _script("""
local added = 0
for i = 2, #ARGV - 2, 3 do
  local key, rec = ARGV[i], ARGV[i + 1]
  local timed = rec ~= '' and timed_of(rec)
  if timed and sections(map_get('d', key)) == rec and not map_get(timed, ARGV[i + 2] .. key) then
    map_set(timed, ARGV[i + 2] .. key, '')
    added = added + 1
  end
end
return added
""")
