//! `meshtap envoyfilter [flags]`: prints (or writes) an Istio EnvoyFilter for meshtap's v2 Lua
//! filter. The flags map one to one onto [`crate::envoyfilter::Options`]; see
//! docs/envoyfilter.md.

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;

use crate::envoyfilter::options::{DEFAULT_MAX_BODY_BYTES, DEFAULT_NAME};
use crate::envoyfilter::{Direction, EnvoyFilter, Options, PathMatch};

#[derive(Debug, Args)]
#[command(after_help = "\
A request is captured when its path matches any --path-* flag (or none is given) AND its method is \
one of the --method flags (or none is given). Other requests never reach the Lua filter: Envoy's \
matcher skips it for them. See docs/envoyfilter.md.

Examples:
  meshtap envoyfilter > deploy/envoyfilter-lua-v2.yaml
  meshtap envoyfilter --namespace bookinfo --selector app=productpage \\
      --path-prefix /api/ --method POST --skip-header authorization")]
pub struct EnvoyFilterArgs {
    /// metadata.name of the EnvoyFilter.
    #[arg(long, default_value = DEFAULT_NAME)]
    pub name: String,
    /// metadata.namespace. Left out by default: the namespace comes from `kubectl apply -n`. In
    /// Istio's root namespace (istio-system by default) the filter applies to the whole mesh.
    #[arg(long)]
    pub namespace: Option<String>,
    /// A workload label, KEY=VALUE (repeatable; all must match): spec.workloadSelector.labels.
    /// Without it, every workload the namespace covers.
    #[arg(long = "selector", value_name = "KEY=VALUE")]
    pub selector: Vec<String>,
    /// Which traffic of the sidecar to capture.
    #[arg(long, value_enum, default_value_t = Direction::Inbound)]
    pub direction: Direction,
    /// Capture requests whose path (without query string) is exactly this (repeatable).
    #[arg(long = "path-exact", value_name = "PATH")]
    pub path_exact: Vec<String>,
    /// Capture requests whose path starts with this (repeatable).
    #[arg(long = "path-prefix", value_name = "PREFIX")]
    pub path_prefix: Vec<String>,
    /// Capture requests whose path (a query string may follow) matches this RE2 regex entirely
    /// (repeatable).
    #[arg(long = "path-regex", value_name = "REGEX")]
    pub path_regex: Vec<String>,
    /// Capture only requests with this method (repeatable; case-insensitive).
    #[arg(long = "method", value_name = "METHOD")]
    pub method: Vec<String>,
    /// Body bytes logged per request and per response; the rest is counted, not logged.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_BODY_BYTES, allow_negative_numbers = true)]
    pub max_body_bytes: u64,
    /// A header (or trailer) never logged, e.g. authorization (repeatable; case-insensitive).
    #[arg(long = "skip-header", value_name = "NAME")]
    pub skip_header: Vec<String>,
    /// Write the manifest to this file instead of stdout.
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: Option<PathBuf>,
}

impl EnvoyFilterArgs {
    /// The generator's options for these flags (exact, then prefix, then regex paths).
    pub fn options(&self) -> Options {
        let paths = (self.path_exact.iter().cloned().map(PathMatch::Exact))
            .chain(self.path_prefix.iter().cloned().map(PathMatch::Prefix))
            .chain(self.path_regex.iter().cloned().map(PathMatch::Regex))
            .collect();
        Options {
            name: self.name.clone(),
            namespace: self.namespace.clone(),
            selector: self.selector.clone(),
            direction: self.direction,
            paths,
            methods: self.method.clone(),
            max_body_bytes: self.max_body_bytes,
            skip_headers: self.skip_header.clone(),
        }
    }
}

pub fn run(args: EnvoyFilterArgs) -> anyhow::Result<i32> {
    let filter = EnvoyFilter::new(args.options())?;
    let yaml = filter.to_yaml()?;
    match args.output {
        Some(path) => std::fs::write(&path, yaml)
            .with_context(|| format!("cannot write {}", path.display()))?,
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(yaml.as_bytes())
                .and_then(|()| out.flush())
                .context("cannot write to stdout")?;
        }
    }
    Ok(0)
}
