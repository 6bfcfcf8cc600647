//! Kubernetes: pod identity from log paths ([`path`], always), and, when the API can be reached,
//! the pods of this node watched to enrich records and select which pods are captured.
//!
//! - [`config`]: the `kubernetes:` config section.
//! - [`watch`]: the watcher task (list + watch of `spec.nodeName=<node>` pods, with backoff).
//! - [`cache`]: the trimmed pods by UID, with delayed deletion.
//! - [`owner`]: the workload at the top of a pod's owner chain.
//! - [`select`]: namespace lists, label selector, opt-out annotation.
//! - [`enrich`]: the [`crate::stage::Stage`] that selects and enriches exchanges.
//!
//! The API is optional at runtime: without a client configuration, or with an API that does not
//! answer, the agent keeps working with the identity from the log path (and namespace selection),
//! retrying the API in the background. `docs/kubernetes.md` is the user's guide.

pub mod cache;
pub mod config;
pub mod enrich;
pub mod owner;
pub mod path;
pub mod select;
pub mod watch;

use std::sync::Arc;
use std::time::Duration;

pub use config::KubernetesConfig;
pub use enrich::Enrich;
pub use path::meta_from_log_path;

use crate::ops::Metrics;
use cache::{LabelFilter, PodCache};
use config::Enabled;
use owner::{ApiReplicaSets, Resolver};
use watch::{purge_interval, SyncState, WatchTask, REPLICASET_TTL};

/// Everything the agent asks of the Kubernetes API, as RBAC sees it: (API group, resource, verbs).
/// The ClusterRole in `deploy/` grants exactly this and nothing more (a test checks both ways).
/// Pods are listed and watched (by [`watch`]); a pod's ReplicaSet is read with `get` (by
/// [`owner`]) to find its Deployment.
pub const API_ACCESS: &[(&str, &str, &[&str])] = &[
    ("", "pods", &["list", "watch"]),
    ("apps", "replicasets", &["get"]),
];

/// Why the agent cannot start its Kubernetes part (only with `kubernetes.enabled: true`, or
/// for a selection that does not compile).
#[derive(Debug, thiserror::Error)]
pub enum K8sError {
    #[error("kubernetes.enabled is true but the node name is unknown: set kubernetes.node_name or the NODE_NAME environment variable (downward API, fieldRef spec.nodeName)")]
    NoNodeName,
    #[error("kubernetes.enabled is true but no Kubernetes client configuration was found: {0}")]
    NoClientConfig(String),
    #[error("invalid kubernetes config: {0}")]
    Config(String),
}

/// The agent's Kubernetes part, started.
pub struct Kubernetes {
    selection: select::Selection,
    /// The watched pods; `None` when the API is not in use.
    pods: Option<Arc<PodCache>>,
}

impl Kubernetes {
    /// Starts watching this node's pods when the config asks for it and a client configuration
    /// is found, then waits (at most `initial_sync_timeout_seconds`, and not at all once the API
    /// answered with an error) for the first list, so the first records are enriched.
    /// `shutdown` turning true stops the watcher task.
    pub async fn start(
        config: &KubernetesConfig,
        metrics: Arc<Metrics>,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Result<Kubernetes, K8sError> {
        metrics.kubernetes_up(false);
        let selection = config.selection().map_err(K8sError::Config)?;
        let without = |selection| Kubernetes {
            selection,
            pods: None,
        };
        if config.enabled == Enabled::False {
            tracing::info!("kubernetes.enabled is false: records carry the pod identity from the log path only.");
            return Ok(without(selection));
        }
        let required = config.enabled == Enabled::True;
        let Some(node) = config.node_name() else {
            if required {
                return Err(K8sError::NoNodeName);
            }
            tracing::info!("The node name is unknown (kubernetes.node_name, NODE_NAME): not using the Kubernetes API; records carry the pod identity from the log path only.");
            return Ok(without(selection));
        };
        let client = match client(config).await {
            Ok(client) => client,
            Err(error) if required => return Err(K8sError::NoClientConfig(error)),
            Err(error) => {
                tracing::info!(%error, "No Kubernetes client configuration: not using the API; records carry the pod identity from the log path only.");
                return Ok(without(selection));
            }
        };

        let grace = Duration::from_secs(config.deletion_grace_seconds);
        let pods = Arc::new(PodCache::new(grace));
        let task = WatchTask {
            node: node.clone(),
            pods: pods.clone(),
            labels: LabelFilter::new(&config.labels),
            selection: selection.clone(),
            resolver: Resolver::new(ApiReplicaSets(client.clone()), REPLICASET_TTL),
            metrics,
            purge_every: purge_interval(grace),
        };
        let (sync_tx, mut sync_rx) = tokio::sync::watch::channel(SyncState::Waiting);
        tokio::spawn(task.run(client, sync_tx, shutdown));

        let timeout = Duration::from_secs(config.initial_sync_timeout_seconds);
        let first =
            tokio::time::timeout(timeout, sync_rx.wait_for(|s| *s != SyncState::Waiting)).await;
        // A failed first attempt was logged by the watcher; only a silent API needs saying here.
        if first.is_err() {
            tracing::warn!(%node, ?timeout,
                "The Kubernetes API did not list this node's pods in time; reading logs meanwhile.");
        }
        Ok(Kubernetes {
            selection,
            pods: Some(pods),
        })
    }

    /// The stage that selects and enriches exchanges (first in the chain).
    pub fn stage(&self, metrics: Arc<Metrics>) -> Enrich {
        Enrich::new(self.selection.clone(), self.pods.clone(), metrics)
    }
}

/// A client from `kubernetes.kubeconfig`, else inferred (`$KUBECONFIG` or `~/.kube/config`, else
/// the in-cluster service account).
async fn client(config: &KubernetesConfig) -> Result<kube::Client, String> {
    let client_config = match &config.kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                .await
                .map_err(|e| format!("{}: {e}", path.display()))?
        }
        None => kube::Config::infer().await.map_err(|e| e.to_string())?,
    };
    kube::Client::try_from(client_config).map_err(|e| e.to_string())
}
