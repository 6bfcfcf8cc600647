-- Reference for scripts/bench-envoy.sh, not a filter to deploy: the least a Lua payload logger
-- does. One log line per direction with the body in base64 (so that a body never breaks the
-- line), and nothing else: no headers, no stream id, no sizes, no truncation flag, no bound.
-- Whatever a useful logger adds costs more than this.
if jit then
  jit.off()
end

local function log_body(handle, dir)
  local parts = {}
  for chunk in handle:bodyChunks() do
    parts[#parts + 1] = chunk:getBytes(0, chunk:length())
  end
  handle:logWarn("[logPayload] " .. dir .. " " .. handle:base64Escape(table.concat(parts)))
end

function envoy_on_request(handle)
  log_body(handle, "rq")
end

function envoy_on_response(handle)
  log_body(handle, "rs")
end
