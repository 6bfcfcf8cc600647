"""Builds an Envoy bootstrap (JSON) whose HTTP filter chain is the Lua filter of an EnvoyFilter
manifest from deploy/, so the demo runs exactly what ships."""
import json
import sys

import yaml

manifest, listen_port, app_port, admin_port = sys.argv[1], *map(int, sys.argv[2:5])
with open(manifest) as f:
    doc = yaml.safe_load(f)
lua = None
for patch in doc["spec"]["configPatches"]:
    typed = patch["patch"]["value"].get("typed_config", {})
    source = typed.get("default_source_code", {})
    lua = source.get("inline_string") or typed.get("inline_code") or lua
if not lua:
    sys.exit(f"{manifest}: no Lua code found")


def addr(port):
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}


config = {
    "admin": {"address": addr(admin_port)},
    "static_resources": {
        "listeners": [{
            "address": addr(listen_port),
            "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    "stat_prefix": "inbound",
                    "route_config": {"virtual_hosts": [{
                        "name": "app", "domains": ["*"],
                        "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "app"}}]}]},
                    "http_filters": [
                        {"name": "envoy.filters.http.lua", "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
                            "default_source_code": {"inline_string": lua}}},
                        {"name": "envoy.filters.http.router", "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}},
                    ],
                },
            }]}],
        }],
        "clusters": [{
            "name": "app", "type": "STATIC",
            "load_assignment": {"cluster_name": "app", "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": addr(app_port)}}]}]},
        }],
    },
}
json.dump(config, sys.stdout, indent=1)
