//! The tap EnvoyFilters in deploy/ load in a real Envoy 1.40 (their patch value inserted before
//! the router, as Istio does) and work: the admin one accepts `meshtap tap`, the file one writes
//! files that `meshtap tap --dir` reads.

use serde_json::Value;

use super::envoy::{http_exchange, TapCli, TapEnvoy};
use crate::support::manifests::repo_root;

/// The http filter an EnvoyFilter manifest inserts (its first patch's value), checked against
/// what Istio needs: an INSERT_BEFORE of the router in the inbound HCM.
fn patch_value(manifest: &str) -> Value {
    let text = std::fs::read_to_string(repo_root().join("deploy").join(manifest)).unwrap();
    let doc: Value = serde_saphyr::from_str(&text).unwrap();
    assert_eq!(doc["kind"], "EnvoyFilter");
    assert_eq!(doc["apiVersion"], "networking.istio.io/v1alpha3");
    let patch = &doc["spec"]["configPatches"][0];
    assert_eq!(patch["applyTo"], "HTTP_FILTER");
    assert_eq!(patch["patch"]["operation"], "INSERT_BEFORE");
    assert_eq!(
        patch["match"]["listener"]["filterChain"]["filter"]["subFilter"]["name"],
        "envoy.filters.http.router"
    );
    let value = patch["patch"]["value"].clone();
    assert_eq!(value["name"], "envoy.filters.http.tap");
    assert_eq!(
        value["typed_config"]["@type"],
        "type.googleapis.com/envoy.extensions.filters.http.tap.v3.Tap"
    );
    value
}

#[test]
fn the_admin_envoyfilter_loads_and_is_tapped_with_its_config_id() {
    let filter = patch_value("envoyfilter-tap.yaml");
    let config_id = filter["typed_config"]["common_config"]["admin_config"]["config_id"]
        .as_str()
        .unwrap();
    assert_eq!(config_id, "meshtap", "the CLI's default --config-id");
    let tmp = tempfile::tempdir().unwrap();
    let envoy = TapEnvoy::start(tmp.path(), &filter, None);
    let admin = envoy.admin.to_string();
    let mut tap = TapCli::spawn(&["--admin", &admin, "--count", "1"]);
    tap.wait_attached(1);
    http_exchange(envoy.listener, "GET", "/manifest", b"");
    let (ok, stderr) = tap.wait_exit();
    assert!(ok, "{stderr}");
    assert_eq!(tap.records[0]["request"]["path"], "/manifest");
}

#[test]
fn the_file_envoyfilter_loads_and_its_files_are_read() {
    let mut filter = patch_value("envoyfilter-tap-file.yaml");
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("taps");
    std::fs::create_dir(&out).unwrap();
    let sink =
        &mut filter["typed_config"]["common_config"]["static_config"]["output_config"]["sinks"][0];
    assert_eq!(
        sink["file_per_tap"]["path_prefix"],
        "/var/run/meshtap/taps/tap"
    );
    sink["file_per_tap"]["path_prefix"] = out.join("tap").to_string_lossy().into_owned().into();
    let envoy = TapEnvoy::start(tmp.path(), &filter, None);
    http_exchange(envoy.listener, "PUT", "/file/manifest", b"");
    let dir = out.to_string_lossy().into_owned();
    // Envoy writes the file when the stream ends; `--count 1` waits for it.
    let mut tap = TapCli::spawn(&["--dir", &dir, "--count", "1"]);
    let (ok, stderr) = tap.wait_exit();
    assert!(ok, "{stderr}");
    assert_eq!(tap.records[0]["request"]["method"], "PUT");
    assert_eq!(tap.records[0]["response"]["body"], "direct-response-body");
}
