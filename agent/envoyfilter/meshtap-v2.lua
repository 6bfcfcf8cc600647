-- meshtap lua-v2 payload logger. Format: docs/lua-v2-format.md
-- `meshtap envoyfilter` renders this file into an Istio EnvoyFilter (docs/envoyfilter.md); it
-- sets MAX_BODY and SKIP_HEADERS below from its flags.

-- LuaJIT's trace compiler off: with it on, this script cost Envoy about 9% more CPU per request
-- (docs/benchmarks.md, "Envoy cost of the Lua filters"). This turns it off only in this filter's
-- own Lua states (Envoy makes one per worker thread); `jit` is nil under a plain Lua.
if jit then
  jit.off()
end

-- Bytes of each body that are logged; the rest is counted and flagged, not logged.
local MAX_BODY = 65536
-- Raw bytes per body line: 12 KiB becomes 16 KiB of base64, which bounds a line (runtimes
-- may still split it into partial pieces, which meshtap joins).
local PIECE = 12288
-- Lower-case names of headers and trailers that are never logged (not even their names).
local SKIP_HEADERS = {}

-- A stream id must be unique within the log file. The address of a table kept alive in
-- this Lua state is unique among the worker threads' states of this process, and the load
-- time tells apart processes that reuse an address after a restart.
meshtap_anchor = meshtap_anchor or {}
local INSTANCE = string.format("%x", (os and os.time and os.time()) or 0) .. "."
  .. (string.match(tostring(meshtap_anchor), "0x(%x+)") or "0")
local streams = 0

local function headers_b64(handle, headers)
  local parts = {}
  for name, value in pairs(headers) do
    if not SKIP_HEADERS[name] then
      parts[#parts + 1] = name .. "\n" .. value .. "\n"
    end
  end
  if #parts == 0 then
    return "-"
  end
  return handle:base64Escape(table.concat(parts))
end

local function log_body(handle, dir, sid)
  -- Each piece is logged when the next one is ready, so the last piece can share its line with
  -- the end (`<dir>be`): one log call fewer per direction. At most one piece is held.
  local seq, size, logged, held = 1, 0, 0, nil
  for chunk in handle:bodyChunks() do
    local len = chunk:length()
    size = size + len
    local off = 0
    while off < len and logged < MAX_BODY do
      local n = math.min(len - off, PIECE, MAX_BODY - logged)
      if held ~= nil then
        handle:logWarn("[logPayload] v2 " .. dir .. "b " .. sid .. " " .. seq .. " " .. held)
        seq = seq + 1
      end
      -- getBytes takes an index relative to THIS chunk (the seed passed a running offset).
      held = handle:base64Escape(chunk:getBytes(off, n))
      off = off + n
      logged = logged + n
    end
  end
  local truncated = "0"
  if size > logged then
    truncated = "1"
  end
  local trailers = handle:trailers()
  if held ~= nil and trailers == nil then
    handle:logWarn("[logPayload] v2 " .. dir .. "be " .. sid .. " " .. seq .. " " .. held .. " "
      .. tostring(handle:timestamp()) .. " " .. string.format("%d", size) .. " " .. truncated)
    return
  end
  if held ~= nil then
    handle:logWarn("[logPayload] v2 " .. dir .. "b " .. sid .. " " .. seq .. " " .. held)
    seq = seq + 1
  end
  if trailers ~= nil then
    handle:logWarn("[logPayload] v2 " .. dir .. "t " .. sid .. " " .. seq .. " "
      .. headers_b64(handle, trailers))
    seq = seq + 1
  end
  handle:logWarn("[logPayload] v2 " .. dir .. "e " .. sid .. " " .. seq .. " "
    .. tostring(handle:timestamp()) .. " " .. string.format("%d", size) .. " " .. truncated)
end

local function new_sid()
  streams = streams + 1
  return INSTANCE .. "." .. streams
end

function envoy_on_request(handle)
  local sid = new_sid()
  handle:streamInfo():dynamicMetadata():set("meshtap", "sid", sid)
  local headers = handle:headers()
  handle:logWarn("[logPayload] v2 rq " .. sid .. " 0 " .. tostring(handle:timestamp()) .. " "
    .. headers_b64(handle, headers))
  log_body(handle, "rq", sid)
end

function envoy_on_response(handle)
  local meta = handle:streamInfo():dynamicMetadata():get("meshtap")
  local sid = meta and meta["sid"]
  if sid == nil then
    sid = new_sid()
  end
  handle:logWarn("[logPayload] v2 rs " .. sid .. " 0 " .. tostring(handle:timestamp()) .. " "
    .. headers_b64(handle, handle:headers()))
  log_body(handle, "rs", sid)
end
