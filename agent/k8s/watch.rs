//! The watcher task: lists and watches the pods of this node (`spec.nodeName=<node>` field
//! selector) with kube's `watcher`, which re-lists after a `410 Gone` and resumes an ended watch
//! from the last resource version, with client-go's backoff between failed attempts. Each pod is
//! trimmed to a [`PodInfo`] as it arrives and its owner chain resolved before it enters the
//! [`PodCache`]; deleted pods are forgotten after the grace period.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::{watcher, WatchStreamExt};
use tokio::sync::watch;

use super::cache::{LabelFilter, PodCache, PodInfo};
use super::owner::{ApiReplicaSets, ReplicaSets, Resolver};
use super::select::Selection;
use crate::ops::Metrics;

/// How the first list went, for the startup wait.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncState {
    Waiting,
    /// The node's pods were listed.
    Synced,
    /// The API answered with an error (or not at all) first.
    Failed(String),
}

/// Everything the task needs besides the client.
pub struct WatchTask<R> {
    pub node: String,
    pub pods: Arc<PodCache>,
    pub labels: LabelFilter,
    pub selection: Selection,
    pub resolver: Resolver<R>,
    pub metrics: Arc<Metrics>,
    /// How often deleted pods past their grace period are forgotten.
    pub purge_every: Duration,
}

/// How often to look for deleted pods past their grace: a quarter of it, within 100 ms..10 s.
pub fn purge_interval(grace: Duration) -> Duration {
    (grace / 4).clamp(Duration::from_millis(100), Duration::from_secs(10))
}

/// ReplicaSet answers are kept 10 minutes: a rollout's new pods come within that.
pub const REPLICASET_TTL: Duration = Duration::from_secs(600);

impl WatchTask<ApiReplicaSets> {
    /// Runs until `shutdown` turns true; reports the first list's outcome on `sync`.
    pub async fn run(
        mut self,
        client: kube::Client,
        sync: watch::Sender<SyncState>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let api: kube::Api<Pod> = kube::Api::all(client);
        let config = watcher::Config::default().fields(&format!("spec.nodeName={}", self.node));
        let stream = watcher(api, config).default_backoff();
        let mut stream = std::pin::pin!(stream);
        let mut purge = tokio::time::interval(self.purge_every);
        purge.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // None until the first outcome: errors are logged at warn only on a change of state.
        let mut up: Option<bool> = None;
        loop {
            tokio::select! {
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() {
                        break;
                    }
                }
                _ = purge.tick() => {
                    let now = Instant::now();
                    self.pods.purge(now);
                    self.resolver.expire(now);
                    self.report();
                }
                event = stream.next() => {
                    let Some(event) = event else { break };
                    match event {
                        Ok(event) => {
                            if self.handle(event).await {
                                if up != Some(true) {
                                    tracing::info!(node = %self.node, pods = self.pods.counts().0,
                                        "Watching this node's pods through the Kubernetes API.");
                                }
                                up = Some(true);
                                self.metrics.kubernetes_up(true);
                                first_outcome(&sync, SyncState::Synced);
                            }
                        }
                        Err(error) => {
                            if is_gone(&error) {
                                // The resource version expired: a routine re-list follows, and
                                // what is cached stays valid until it ends.
                                tracing::info!(%error, "The pod watch expired; listing this node's pods again.");
                                continue;
                            }
                            if up != Some(false) {
                                tracing::warn!(%error,
                                    "Cannot watch this node's pods through the Kubernetes API; pods not seen yet get path-only metadata. Retrying with backoff.");
                            } else {
                                tracing::debug!(%error, "The Kubernetes API is still failing.");
                            }
                            up = Some(false);
                            self.metrics.kubernetes_up(false);
                            first_outcome(&sync, SyncState::Failed(error.to_string()));
                        }
                    }
                    self.report();
                }
            }
        }
        self.metrics.kubernetes_up(false);
    }
}

impl<R: ReplicaSets> WatchTask<R> {
    /// Applies one watcher event; true when it shows the watch is in sync (a list ended, or a
    /// watch event arrived).
    pub async fn handle(&mut self, event: watcher::Event<Pod>) -> bool {
        match event {
            watcher::Event::Init => {
                self.pods.begin_list();
                false
            }
            watcher::Event::InitApply(pod) => {
                self.apply(pod).await;
                false
            }
            watcher::Event::InitDone => {
                self.pods.end_list(Instant::now());
                true
            }
            watcher::Event::Apply(pod) => {
                self.apply(pod).await;
                true
            }
            watcher::Event::Delete(pod) => {
                let mut info = PodInfo::from_pod(pod, &self.labels, &self.selection);
                if !info.uid.is_empty() {
                    if self.pods.get(&info.uid).is_none() {
                        self.resolve(&mut info).await;
                    }
                    self.pods.delete(info, Instant::now());
                }
                true
            }
        }
    }

    async fn apply(&mut self, pod: Pod) {
        let mut info = PodInfo::from_pod(pod, &self.labels, &self.selection);
        if info.uid.is_empty() {
            tracing::warn!(namespace = %info.namespace, pod = %info.name,
                "The Kubernetes API sent a pod without a UID; ignoring it.");
            return;
        }
        self.resolve(&mut info).await;
        self.pods.apply(info);
    }

    /// Fills `workload`: from the cached pod when its controller did not change, else from the
    /// owner chain.
    async fn resolve(&mut self, info: &mut PodInfo) {
        let Some(owner) = info.owner.clone() else {
            return;
        };
        if let Some(known) = self.pods.get(&info.uid) {
            if known.owner_resolved && known.owner == info.owner {
                info.workload = known.workload.clone();
                info.owner_resolved = true;
                return;
            }
        }
        let (workload, resolved) = self
            .resolver
            .workload(&info.namespace, &owner, Instant::now())
            .await;
        info.workload = Some(workload);
        info.owner_resolved = resolved;
    }

    fn report(&self) {
        let (live, deleted) = self.pods.counts();
        self.metrics.kubernetes_pods(live, deleted);
    }
}

/// Reports `outcome` unless an earlier one was.
fn first_outcome(sync: &watch::Sender<SyncState>, outcome: SyncState) {
    sync.send_if_modified(|s| {
        let first = *s == SyncState::Waiting;
        if first {
            *s = outcome;
        }
        first
    });
}

/// A `410 Gone` watch error: the resource version expired.
fn is_gone(error: &watcher::Error) -> bool {
    matches!(error, watcher::Error::WatchError(status) if status.code == 410)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k8s::cache::tests::{pod_json, rs_owner};
    use crate::k8s::owner::OwnerRef;
    use crate::record::Workload;

    /// Every ReplicaSet belongs to Deployment `reviews-v1`; reads are counted.
    struct OneDeployment(std::sync::atomic::AtomicUsize);

    impl ReplicaSets for OneDeployment {
        async fn controller_of(&self, _: &str, _: &str) -> Result<Option<OwnerRef>, String> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(Some(OwnerRef {
                kind: "Deployment".into(),
                name: "reviews-v1".into(),
                uid: "d".into(),
            }))
        }
    }

    fn task() -> WatchTask<OneDeployment> {
        WatchTask {
            node: "node-a".into(),
            pods: Arc::new(PodCache::new(Duration::from_secs(60))),
            labels: LabelFilter::new(&["app".into()]),
            selection: Selection::default(),
            resolver: Resolver::new(OneDeployment(0.into()), REPLICASET_TTL),
            metrics: Arc::new(Metrics::new()),
            purge_every: Duration::from_secs(1),
        }
    }

    #[tokio::test]
    async fn events_fill_the_cache_and_modifications_reuse_the_workload() {
        let mut t = task();
        assert!(!t.handle(watcher::Event::Init).await);
        let pod = pod_json("u1", rs_owner("reviews-v1-6b8d5c7f9"));
        assert!(!t.handle(watcher::Event::InitApply(pod.clone())).await);
        assert!(t.handle(watcher::Event::InitDone).await);
        let p = t.pods.get("u1").unwrap();
        assert_eq!(
            p.workload,
            Some(Workload {
                kind: "Deployment".into(),
                name: "reviews-v1".into()
            })
        );
        assert!(p.owner_resolved);
        // A modification with the same owner needs no API call, even after the resolver forgot.
        t.resolver.expire(Instant::now() + REPLICASET_TTL);
        let mut modified = pod.clone();
        modified.status.as_mut().unwrap().pod_ip = Some("10.244.1.99".into());
        assert!(t.handle(watcher::Event::Apply(modified)).await);
        assert_eq!(t.resolver_reads(), 1);
        let p = t.pods.get("u1").unwrap();
        assert_eq!(p.pod_ip.as_deref(), Some("10.244.1.99"));
        assert!(p.workload.is_some());

        // Deletion keeps the pod, marked.
        assert!(t.handle(watcher::Event::Delete(pod)).await);
        assert!(t.pods.is_deleted("u1"));
        assert_eq!(
            t.pods.get("u1").unwrap().pod_ip.as_deref(),
            Some("10.244.1.99")
        );
        t.report();
        assert!(t
            .metrics
            .encode()
            .contains("meshtap_kubernetes_pods{state=\"deleted\"} 1\n"));

        // A pod without a UID is ignored, not cached under "".
        let mut bad = pod_json("", rs_owner("x"));
        bad.metadata.uid = None;
        t.handle(watcher::Event::Apply(bad)).await;
        assert!(t.pods.get("").is_none());
    }

    impl WatchTask<OneDeployment> {
        fn resolver_reads(&self) -> usize {
            self.resolver
                .replica_sets()
                .0
                .load(std::sync::atomic::Ordering::SeqCst)
        }
    }

    #[test]
    fn purge_interval_is_bounded() {
        assert_eq!(
            purge_interval(Duration::from_secs(300)),
            Duration::from_secs(10)
        );
        assert_eq!(
            purge_interval(Duration::from_secs(1)),
            Duration::from_millis(250)
        );
        assert_eq!(
            purge_interval(Duration::from_millis(10)),
            Duration::from_millis(100)
        );
    }
}
