-- Reference for scripts/bench-envoy.sh, not a filter to deploy: the least any Lua filter that
-- reads bodies costs Envoy. It walks both bodies chunk by chunk (as meshtap's v2 filter does)
-- and logs nothing. LuaJIT's trace compiler is off, as in the v2 filter.
if jit then
  jit.off()
end

function envoy_on_request(handle)
  for _ in handle:bodyChunks() do
  end
end

function envoy_on_response(handle)
  for _ in handle:bodyChunks() do
  end
end
