-- Merge one node's report of a user into the user as the cluster shows it.
--
-- Runs atomically in Redis, in the user's slot. Every node holding sessions of
-- the user keeps one entry (its own aggregate: status, devices, latest activity
-- and liveness); the user's status is the strongest among entries with live
-- sessions, or, when none has any, among entries a node holds through the grace
-- period. The rules are PROTOCOL.md's, over nodes instead of sessions.
--
-- KEYS: entries, merged, events; on a single Redis also order, views, audit (the read
--       model, written here in the same round trip; a Redis Cluster keeps those in
--       another slot, so the node writes them after the merge)
-- ARGV: user, node, epoch, entry ('' removes it, '*hold' keeps it without its
--       devices: the node's sessions are lost), profile ('' keeps it, else JSON
--       [username, message, shown username, shown message]: what the user set,
--       and what others see of it while it shows offline), now_ms, reason,
--       device, publish command
--       ('' publishes nothing), channel, events cap, fence (1: the node's epoch
--       is dead: refuse its writes up to epoch from now on; its entry is
--       changed only if no later epoch wrote it), audit cap (with the read model's keys)
-- Returns the merged JSON with "po"/"pp" (push to the user's own sessions /
-- to others) and "c" (anything changed), or false when the node's epoch is fenced.

local PRIORITY = {offline = 0, away = 1, busy = 2, online = 3}
local NAMES = {[0] = 'offline', [1] = 'away', [2] = 'busy', [3] = 'online'}
local null = cjson.null

local user, node, epoch = ARGV[1], ARGV[2], tonumber(ARGV[3])
local entry, profile, now = ARGV[4], ARGV[5], tonumber(ARGV[6])

local fencing = ARGV[12] == '1'
local fence = tonumber(redis.call('HGET', KEYS[1], 'x:' .. node))
if fencing then
  if not fence or fence < epoch then
    redis.call('HSET', KEYS[1], 'x:' .. node, epoch)
  end
elseif fence and fence >= epoch then
  return false
end
local current = nil
if fencing or entry == '*hold' then
  current = redis.call('HGET', KEYS[1], node)
  if current then current = cjson.decode(current) end
end
-- Cleaning up after a dead epoch of a node leaves alone an entry written by a
-- later epoch of the same name (the node restarted and has the user again).
local touch = not (fencing and current and (current.e or 0) > epoch)
if not touch then
  -- nothing of this node's entry changes
elseif entry == '' then
  redis.call('HDEL', KEYS[1], node)
elseif entry == '*hold' then
  if current and #current.d > 0 then
    current.d = nil
    redis.call('HSET', KEYS[1], node, string.sub(cjson.encode(current), 1, -2) .. ',"d":[]}')
  end
else
  redis.call('HSET', KEYS[1], node, entry)
end

local function later(a, b)
  if a == nil or a == null then return b end
  if b == nil or b == null then return a end
  if b > a then return b end
  return a
end

local best_live, best_held = -1, -1
local devices, active, alive, held = {}, null, null, {}
local fields = redis.call('HGETALL', KEYS[1])
for i = 1, #fields, 2 do
  local name, value = fields[i], fields[i + 1]
  local kind = string.sub(name, 1, 2)
  if kind == 'v:' then
    alive = later(alive, tonumber(value))
  elseif kind ~= 'x:' then
    local e = cjson.decode(value)
    local p = PRIORITY[e.s]
    if #e.d > 0 then
      if p > best_live then best_live = p end
      for _, d in ipairs(e.d) do devices[#devices + 1] = d end
    else
      held[#held + 1] = name
      if p > best_held then best_held = p end
    end
    active = later(active, e.a)
    alive = later(alive, e.v)
  end
end
-- A node holds the user through the grace period when it lost its own last
-- session; while another node has a session that was not the user's last one,
-- so the hold ends (as a second device's drop does on one server). Otherwise,
-- once the live sessions go too, a stale hold would show instead of theirs.
if best_live >= 0 and #held > 0 then
  redis.call('HDEL', KEYS[1], unpack(held))
end

local status = 'offline'
if best_live >= 0 then
  status = NAMES[best_live]
elseif best_held >= 0 then
  status = NAMES[best_held]
end

if entry == '' and touch then
  -- Its last heartbeat is in al from now on (below); the stamp is not needed.
  redis.call('HDEL', KEYS[1], 'v:' .. node)
end

local raw = redis.call('HGET', KEYS[2], 'j')
local old
if raw then
  old = cjson.decode(raw)
else
  old = {s = 'offline', u = null, m = null, su = null, sm = null, ls = null, al = null,
         d = {}, ver = 0}
end

local u, m = old.u, old.m
-- Others see a user showing offline with what it last showed while visible.
local su, sm = old.su, old.sm
if profile ~= '' then
  local p = cjson.decode(profile)
  u, m = p[1], p[2]
  if status == 'offline' then
    -- The reporting node saw the user visible with this (its later reports can
    -- carry an earlier change: they replace one another on their way here).
    su, sm = p[3], p[4]
  end
end
if status ~= 'offline' or old.ver == 0 then
  su, sm = u, m
end
local al = later(old.al, alive)
local ls = old.ls
if status ~= 'offline' then
  ls = later(null, active)
  if ls == null then
    ls = old.ls
  elseif old.s ~= 'offline' then
    -- An ended session's activity counts while the user stays online.
    ls = later(ls, old.ls)
  end
elseif old.s ~= 'offline' then
  ls = later(al, null)
  if ls == null then ls = old.ls end
end

local function list(t)
  if #t == 0 then return '[]' end
  return cjson.encode(t)
end

local push_own = status ~= old.s or u ~= old.u or m ~= old.m
local push_public = status ~= old.s or su ~= old.su or sm ~= old.sm
local changed = push_own or push_public or ls ~= old.ls or list(devices) ~= list(old.d)
local tail = ',"id":' .. cjson.encode(user) .. ',"o":' .. cjson.encode(node)
if not changed and al == old.al then
  -- Nothing to write or push: the view as it stands, flags off.
  local body = raw or '{"s":"offline","d":[],"ver":0}'
  return string.sub(body, 1, -2) .. tail .. ',"po":false,"pp":false,"sc":false,"c":false}'
end

local ver = old.ver + 1
local view = {s = status, u = u, m = m, su = su, sm = sm, ls = ls, al = al, ver = ver}
-- Devices are spliced in as JSON: cjson cannot tell an empty list from an empty object.
local body = string.sub(cjson.encode(view), 1, -2) .. ',"d":' .. list(devices)
redis.call('HSET', KEYS[2], 'j', body .. '}')

if status ~= old.s then
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[11], '*',
             's', status, 'r', ARGV[7], 'd', ARGV[8], 't', now)
end

if KEYS[6] then
  -- The read model (wire.order_score's order; the stored view as decode_merged reads it).
  local rank, seen = 0, -1
  if status == 'offline' then rank = 1 end
  if ls ~= null then seen = ls end
  redis.call('ZADD', KEYS[4], string.format('%.0f', rank * 17592186044416 + (8796093022208 - seen)),
             user)
  redis.call('HSET', KEYS[5], user, body .. '}')
  if status ~= old.s then
    redis.call('XADD', KEYS[6], 'MAXLEN', '~', ARGV[13], '*',
               'u', user, 's', status, 'r', ARGV[7], 'd', ARGV[8], 't', ARGV[6])
  end
end

local message = body .. tail .. ',"po":' .. tostring(push_own) .. ',"pp":' .. tostring(push_public)
  .. ',"sc":' .. tostring(status ~= old.s) .. ',"c":' .. tostring(changed) .. '}'
if changed and ARGV[9] ~= '' then
  redis.call(ARGV[9], ARGV[10], message)
end
return message
