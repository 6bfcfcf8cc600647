//! The Lua under test comes from the manifests that ship (`deploy/`), so what ships is what is
//! tested.

use std::path::{Path, PathBuf};

use serde_json::Value;

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The v2 filter's per-body cap, as the shipped manifest sets it.
pub const V2_MAX_BODY: usize = 65536;
const V2_MAX_BODY_LINE: &str = "local MAX_BODY = 65536";

/// Which filter a run loads into Envoy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    /// meshtap's own filter (`deploy/envoyfilter-lua-v2.yaml`), with `MAX_BODY` as given.
    V2 { max_body: usize },
    /// The seed article's body-only filter (`deploy/legacy/envoyfilter-logpayload-body.yaml`).
    V1Body,
    /// The seed article's headers-by-path filter (`deploy/legacy/envoyfilter-logpayload-headers.yaml`).
    V1Headers,
}

impl Filter {
    pub fn manifest(self) -> PathBuf {
        let root = repo_root();
        match self {
            Filter::V2 { .. } => root.join("deploy/envoyfilter-lua-v2.yaml"),
            Filter::V1Body => root.join("deploy/legacy/envoyfilter-logpayload-body.yaml"),
            Filter::V1Headers => root.join("deploy/legacy/envoyfilter-logpayload-headers.yaml"),
        }
    }

    pub fn is_v2(self) -> bool {
        matches!(self, Filter::V2 { .. })
    }

    pub fn name(self) -> String {
        match self {
            Filter::V2 { max_body } if max_body == V2_MAX_BODY => "v2".into(),
            Filter::V2 { max_body } => format!("v2-max{max_body}"),
            Filter::V1Body => "v1-body".into(),
            Filter::V1Headers => "v1-headers".into(),
        }
    }

    /// The Lua source this run loads.
    pub fn lua(self) -> String {
        let lua = lua_from_manifest(&self.manifest());
        match self {
            Filter::V2 { max_body } => {
                assert_eq!(
                    lua.matches(V2_MAX_BODY_LINE).count(),
                    1,
                    "the v2 manifest must set `{V2_MAX_BODY_LINE}` exactly once"
                );
                lua.replace(V2_MAX_BODY_LINE, &format!("local MAX_BODY = {max_body}"))
            }
            _ => lua,
        }
    }
}

/// The Lua of the (first) Lua filter patch of an Istio EnvoyFilter manifest:
/// `spec.configPatches[*].patch.value.typed_config.default_source_code.inline_string`
/// (or the older `inline_code`).
pub fn lua_from_manifest(path: &Path) -> String {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read manifest {}: {e}", path.display()));
    let doc: Value = serde_saphyr::from_str(&text)
        .unwrap_or_else(|e| panic!("manifest {} is not valid YAML: {e}", path.display()));
    let patches = doc["spec"]["configPatches"]
        .as_array()
        .unwrap_or_else(|| panic!("{}: no spec.configPatches", path.display()));
    for patch in patches {
        let typed = &patch["patch"]["value"]["typed_config"];
        if let Some(lua) = typed["default_source_code"]["inline_string"].as_str() {
            return lua.to_string();
        }
        if let Some(lua) = typed["inline_code"].as_str() {
            return lua.to_string();
        }
    }
    panic!(
        "{}: no Lua inline_string / inline_code in any config patch",
        path.display()
    );
}

#[test]
fn legacy_manifests_carry_the_seed_lua_verbatim() {
    let root = repo_root();
    let pairs = [
        (Filter::V1Body, "logpayload-body.lua"),
        (Filter::V1Headers, "logpayload-headers-by-path.lua"),
    ];
    for (filter, file) in pairs {
        let lua = filter.lua();
        // The copy kept in the repository, so CI checks this without ../shared.
        let fixture = root.join("tests/fixtures/seed-filters").join(file);
        let kept = std::fs::read_to_string(&fixture).unwrap();
        assert_eq!(
            lua,
            kept,
            "{} differs from {}",
            filter.manifest().display(),
            fixture.display()
        );
        // The seed itself, where the shared folder is beside the repository.
        let seed = root.join("../shared/seed-filters").join(file);
        match std::fs::read_to_string(&seed) {
            Ok(seed_text) => assert_eq!(
                lua,
                seed_text,
                "{} differs from the seed {}",
                filter.manifest().display(),
                seed.display()
            ),
            Err(_) => eprintln!(
                "note: {} not found, compared with the repository's copy only",
                seed.display()
            ),
        }
    }
}

#[test]
fn legacy_manifests_are_istio_envoyfilters_for_productpage() {
    for filter in [Filter::V1Body, Filter::V1Headers] {
        let path = filter.manifest();
        let text = std::fs::read_to_string(&path).unwrap();
        let doc: Value = serde_saphyr::from_str(&text).unwrap();
        assert_eq!(doc["apiVersion"], "networking.istio.io/v1alpha3");
        assert_eq!(doc["kind"], "EnvoyFilter");
        assert_eq!(
            doc["spec"]["workloadSelector"]["labels"]["app"],
            "productpage"
        );
        let patch = &doc["spec"]["configPatches"][0];
        assert_eq!(patch["applyTo"], "HTTP_FILTER");
        assert_eq!(patch["match"]["context"], "SIDECAR_INBOUND");
        let filter_match = &patch["match"]["listener"]["filterChain"]["filter"];
        assert_eq!(
            filter_match["name"],
            "envoy.filters.network.http_connection_manager"
        );
        assert_eq!(
            filter_match["subFilter"]["name"],
            "envoy.filters.http.router"
        );
        assert_eq!(patch["patch"]["operation"], "INSERT_BEFORE");
        assert_eq!(patch["patch"]["value"]["name"], "envoy.filters.http.lua");
        assert_eq!(
            patch["patch"]["value"]["typed_config"]["@type"],
            "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua"
        );
    }
}

#[test]
fn v2_cap_can_be_raised() {
    let lua = Filter::V2 {
        max_body: 1_048_576,
    }
    .lua();
    assert!(lua.contains("local MAX_BODY = 1048576"));
    assert!(!lua.contains(V2_MAX_BODY_LINE));
}
