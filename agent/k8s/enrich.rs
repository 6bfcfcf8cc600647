//! The first stage of the chain: selection by `kubernetes.select`, and enrichment of `k8s` with
//! what the API says about the pod (allow-listed labels, workload, service account, node, pod IP),
//! found by the pod UID the log path carries.
//!
//! - Namespace rules apply to every exchange, with or without the API (the namespace is in the
//!   log path).
//! - The label selector and the opt-out annotation apply when the pod is known (live, or deleted
//!   within the grace period).
//! - A pod not known (the API is down or not configured, or lags behind the pod's first lines):
//!   its exchanges keep their path-only metadata and are delivered, or dropped as `not_selected`
//!   with `unknown_pods: drop`; while the API is configured they are counted in
//!   `meshtap_kubernetes_unenriched_exchanges_total`.

use std::sync::Arc;

use super::cache::PodCache;
use super::config::UnknownPods;
use super::select::Selection;
use crate::ops::Metrics;
use crate::record::Exchange;
use crate::stage::{Stage, Verdict};

/// The `reason` label of exchanges dropped by selection.
pub const NOT_SELECTED: &str = "not_selected";

/// Selection and enrichment (see the module docs).
pub struct Enrich {
    selection: Selection,
    /// The pods the watcher keeps; `None` when the API is not in use.
    pods: Option<Arc<PodCache>>,
    metrics: Arc<Metrics>,
}

impl Enrich {
    pub fn new(selection: Selection, pods: Option<Arc<PodCache>>, metrics: Arc<Metrics>) -> Self {
        Enrich {
            selection,
            pods,
            metrics,
        }
    }
}

impl Stage for Enrich {
    fn process(&mut self, exchange: &mut Exchange) -> Verdict {
        // Not from a kubelet log path (a plain file given to the agent): nothing to select on.
        let Some(k8s) = exchange.k8s.as_mut() else {
            return Verdict::Keep;
        };
        if !self.selection.namespace_selected(&k8s.namespace) {
            return Verdict::Drop(NOT_SELECTED);
        }
        let pod = self.pods.as_ref().and_then(|pods| pods.get(&k8s.pod_uid));
        let Some(pod) = pod else {
            if self.pods.is_some() {
                self.metrics.kubernetes_unenriched();
            }
            return match self.selection.unknown_pods {
                UnknownPods::Keep => Verdict::Keep,
                UnknownPods::Drop => Verdict::Drop(NOT_SELECTED),
            };
        };
        if !pod.selected {
            return Verdict::Drop(NOT_SELECTED);
        }
        k8s.labels = pod.labels.clone();
        k8s.workload = pod.workload.clone();
        k8s.service_account = pod.service_account.clone();
        k8s.node = pod.node.clone();
        k8s.pod_ip = pod.pod_ip.clone();
        Verdict::Keep
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::k8s::cache::PodInfo;
    use crate::record::{K8sMeta, Workload};

    fn exchange(namespace: &str, uid: &str) -> Exchange {
        let mut ex = crate::sink::stdout::tests::exchange("x", "body");
        ex.k8s = Some(K8sMeta {
            namespace: namespace.into(),
            pod: "p".into(),
            pod_uid: uid.into(),
            container: "istio-proxy".into(),
            ..K8sMeta::default()
        });
        ex
    }

    fn selection() -> Selection {
        Selection {
            exclude: ["kube-system".to_string()].into(),
            ..Selection::default()
        }
    }

    fn known(cache: &PodCache, uid: &str, selected: bool) {
        cache.apply(PodInfo {
            namespace: "shop".into(),
            name: "p".into(),
            uid: uid.into(),
            labels: [("app".to_string(), "reviews".to_string())].into(),
            workload: Some(Workload {
                kind: "Deployment".into(),
                name: "reviews-v1".into(),
            }),
            service_account: Some("sa".into()),
            node: Some("node-a".into()),
            pod_ip: Some("10.0.0.7".into()),
            selected,
            owner: None,
            owner_resolved: true,
        });
    }

    #[test]
    fn enriches_known_pods_and_drops_unselected_ones() {
        let cache = Arc::new(PodCache::new(Duration::from_secs(60)));
        known(&cache, "u1", true);
        known(&cache, "u2", false);
        let metrics = Arc::new(Metrics::new());
        let mut stage = Enrich::new(selection(), Some(cache.clone()), metrics.clone());

        let mut ex = exchange("shop", "u1");
        assert_eq!(stage.process(&mut ex), Verdict::Keep);
        let k = ex.k8s.unwrap();
        assert_eq!(k.labels["app"], "reviews");
        assert_eq!(k.workload.unwrap().name, "reviews-v1");
        assert_eq!(k.service_account.as_deref(), Some("sa"));
        assert_eq!(k.node.as_deref(), Some("node-a"));
        assert_eq!(k.pod_ip.as_deref(), Some("10.0.0.7"));
        assert_eq!(k.pod, "p", "path identity untouched");

        assert_eq!(
            stage.process(&mut exchange("shop", "u2")),
            Verdict::Drop(NOT_SELECTED)
        );
        assert_eq!(
            stage.process(&mut exchange("kube-system", "u1")),
            Verdict::Drop(NOT_SELECTED),
            "namespace rules first"
        );

        // Deleted but within the grace period: still enriched.
        cache.delete(PodInfo::default(), Instant::now());
        cache.delete(
            PodInfo {
                uid: "u1".into(),
                ..PodInfo::default()
            },
            Instant::now(),
        );
        let mut ex = exchange("shop", "u1");
        assert_eq!(stage.process(&mut ex), Verdict::Keep);
        assert!(ex.k8s.unwrap().workload.is_some());

        // Unknown: kept with path-only metadata, and counted.
        let mut ex = exchange("shop", "unknown");
        assert_eq!(stage.process(&mut ex), Verdict::Keep);
        assert!(ex.k8s.unwrap().labels.is_empty());
        assert!(metrics
            .encode()
            .contains("meshtap_kubernetes_unenriched_exchanges_total 1\n"));

        let mut strict = Enrich::new(
            Selection {
                unknown_pods: UnknownPods::Drop,
                ..selection()
            },
            Some(cache),
            metrics,
        );
        assert_eq!(
            strict.process(&mut exchange("shop", "unknown")),
            Verdict::Drop(NOT_SELECTED)
        );
    }

    #[test]
    fn without_the_api_namespaces_still_select() {
        let metrics = Arc::new(Metrics::new());
        let mut stage = Enrich::new(selection(), None, metrics.clone());
        assert_eq!(stage.process(&mut exchange("shop", "u1")), Verdict::Keep);
        assert_eq!(
            stage.process(&mut exchange("kube-system", "u1")),
            Verdict::Drop(NOT_SELECTED)
        );
        let mut no_identity = exchange("shop", "u1");
        no_identity.k8s = None;
        assert_eq!(stage.process(&mut no_identity), Verdict::Keep);
        assert!(
            metrics
                .encode()
                .contains("meshtap_kubernetes_unenriched_exchanges_total 0\n"),
            "not counted when the API is not in use"
        );
    }
}
