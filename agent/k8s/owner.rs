//! The workload a pod belongs to, from its controller owner reference (`controller: true`):
//!
//! - a ReplicaSet is followed one step up, with a `get` of the ReplicaSet (cached): its controller
//!   (a Deployment, or an Argo Rollout, ...) is the workload, or the ReplicaSet itself when it has
//!   none;
//! - any other controller (StatefulSet, DaemonSet, Job, a custom controller, a Node for a static
//!   pod's mirror) is the workload itself. A Job's CronJob is not looked up: that would need read
//!   access to jobs, which the agent does not ask for (see [`super::API_ACCESS`]).

use std::collections::HashMap;
use std::future::Future;
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

use crate::record::Workload;

/// A controller owner reference, as much of it as the resolution needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerRef {
    pub kind: String,
    pub name: String,
    pub uid: String,
}

/// The controller among an object's owner references.
pub fn controller_of(refs: &[OwnerReference]) -> Option<OwnerRef> {
    refs.iter()
        .find(|r| r.controller == Some(true))
        .map(|r| OwnerRef {
            kind: r.kind.clone(),
            name: r.name.clone(),
            uid: r.uid.clone(),
        })
}

/// Reads a ReplicaSet's controller owner: the API in the agent, a map in tests.
pub trait ReplicaSets {
    /// The controller of ReplicaSet `namespace/name` (`None`: it has none), or why it could not
    /// be read.
    fn controller_of(
        &self,
        namespace: &str,
        name: &str,
    ) -> impl Future<Output = Result<Option<OwnerRef>, String>> + Send;
}

/// Reads ReplicaSets from the API: metadata only (`get` with the `PartialObjectMetadata`
/// representation), since only the owner references are needed.
pub struct ApiReplicaSets(pub kube::Client);

impl ReplicaSets for ApiReplicaSets {
    async fn controller_of(&self, namespace: &str, name: &str) -> Result<Option<OwnerRef>, String> {
        let api: kube::Api<k8s_openapi::api::apps::v1::ReplicaSet> =
            kube::Api::namespaced(self.0.clone(), namespace);
        let rs = api.get_metadata(name).await.map_err(|e| e.to_string())?;
        Ok(controller_of(
            rs.metadata.owner_references.as_deref().unwrap_or_default(),
        ))
    }
}

/// Resolves owners to workloads, caching each ReplicaSet's answer for `ttl` (a ReplicaSet's
/// controller does not change; the expiry only bounds the cache on a node that sees many rollouts).
pub struct Resolver<R> {
    replica_sets: R,
    ttl: Duration,
    cache: HashMap<(String, String), (Workload, Instant)>,
}

impl<R: ReplicaSets> Resolver<R> {
    pub fn new(replica_sets: R, ttl: Duration) -> Self {
        Resolver {
            replica_sets,
            ttl,
            cache: HashMap::new(),
        }
    }

    /// The workload for a pod in `namespace` with controller `owner`, and whether it is final
    /// (false when a ReplicaSet could not be read: the ReplicaSet stands in until a retry).
    pub async fn workload(
        &mut self,
        namespace: &str,
        owner: &OwnerRef,
        now: Instant,
    ) -> (Workload, bool) {
        let own = Workload {
            kind: owner.kind.clone(),
            name: owner.name.clone(),
        };
        if owner.kind != "ReplicaSet" {
            return (own, true);
        }
        let key = (namespace.to_string(), owner.name.clone());
        if let Some((workload, at)) = self.cache.get(&key) {
            if now.saturating_duration_since(*at) < self.ttl {
                return (workload.clone(), true);
            }
        }
        match self
            .replica_sets
            .controller_of(namespace, &owner.name)
            .await
        {
            Ok(controller) => {
                let workload = controller
                    .map(|c| Workload {
                        kind: c.kind,
                        name: c.name,
                    })
                    .unwrap_or(own);
                self.cache.insert(key, (workload.clone(), now));
                (workload, true)
            }
            Err(error) => {
                tracing::warn!(namespace, replicaset = %owner.name, %error,
                    "Could not read a pod's ReplicaSet; its workload is the ReplicaSet until a retry.");
                (own, false)
            }
        }
    }

    /// Forgets ReplicaSets not looked up within the TTL before `now`.
    pub fn expire(&mut self, now: Instant) {
        let ttl = self.ttl;
        self.cache
            .retain(|_, (_, at)| now.saturating_duration_since(*at) < ttl);
    }

    /// Where ReplicaSets are read from.
    pub fn replica_sets(&self) -> &R {
        &self.replica_sets
    }

    pub fn cached(&self) -> usize {
        self.cache.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// ReplicaSets from a map, counting reads; a missing one is an API error.
    #[derive(Default, Clone)]
    struct Fake {
        owners: HashMap<String, Option<OwnerRef>>,
        reads: Arc<AtomicUsize>,
    }

    impl ReplicaSets for Fake {
        async fn controller_of(&self, ns: &str, name: &str) -> Result<Option<OwnerRef>, String> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            self.owners
                .get(&format!("{ns}/{name}"))
                .cloned()
                .ok_or_else(|| "403 Forbidden".to_string())
        }
    }

    fn owner(kind: &str, name: &str) -> OwnerRef {
        OwnerRef {
            kind: kind.into(),
            name: name.into(),
            uid: format!("{name}-uid"),
        }
    }

    fn workload(kind: &str, name: &str) -> Workload {
        Workload {
            kind: kind.into(),
            name: name.into(),
        }
    }

    #[test]
    fn the_controller_reference_is_the_owner() {
        let refs: Vec<OwnerReference> = serde_json::from_value(serde_json::json!([
            {"apiVersion": "v1", "kind": "ConfigMap", "name": "not-me", "uid": "1"},
            {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "db", "uid": "2", "controller": true}
        ]))
        .unwrap();
        assert_eq!(
            controller_of(&refs),
            Some(owner("StatefulSet", "db")).map(|mut o| {
                o.uid = "2".into();
                o
            })
        );
        assert_eq!(controller_of(&refs[..1]), None, "no controller: no owner");
    }

    #[tokio::test]
    async fn follows_replicasets_and_caches_them() {
        let mut fake = Fake::default();
        fake.owners.insert(
            "shop/reviews-v1-6b8d5c7f9".into(),
            Some(owner("Deployment", "reviews-v1")),
        );
        fake.owners.insert("shop/bare-rs".into(), None);
        fake.owners
            .insert("shop/canary-abc".into(), Some(owner("Rollout", "canary")));
        let reads = fake.reads.clone();
        let mut r = Resolver::new(fake, Duration::from_secs(600));
        let t0 = Instant::now();

        let rs = owner("ReplicaSet", "reviews-v1-6b8d5c7f9");
        assert_eq!(
            r.workload("shop", &rs, t0).await,
            (workload("Deployment", "reviews-v1"), true)
        );
        assert_eq!(
            r.workload("shop", &rs, t0).await,
            (workload("Deployment", "reviews-v1"), true)
        );
        assert_eq!(
            reads.load(Ordering::SeqCst),
            1,
            "the second pod hits the cache"
        );

        let bare = owner("ReplicaSet", "bare-rs");
        assert_eq!(
            r.workload("shop", &bare, t0).await,
            (workload("ReplicaSet", "bare-rs"), true)
        );
        let canary = owner("ReplicaSet", "canary-abc");
        assert_eq!(
            r.workload("shop", &canary, t0).await,
            (workload("Rollout", "canary"), true)
        );

        for kind in ["StatefulSet", "DaemonSet", "Job", "Node"] {
            assert_eq!(
                r.workload("shop", &owner(kind, "x"), t0).await,
                (workload(kind, "x"), true),
                "{kind} is its own workload"
            );
        }
        assert_eq!(
            reads.load(Ordering::SeqCst),
            3,
            "direct owners need no API call"
        );

        // An API error: the ReplicaSet stands in, not cached, so the next event retries.
        let unknown = owner("ReplicaSet", "gone");
        assert_eq!(
            r.workload("shop", &unknown, t0).await,
            (workload("ReplicaSet", "gone"), false)
        );
        assert!(
            !r.workload("other", &rs, t0).await.1,
            "namespaces are apart"
        );
        assert_eq!(reads.load(Ordering::SeqCst), 5);

        assert_eq!(r.cached(), 3);
        r.expire(t0 + Duration::from_secs(600));
        assert_eq!(r.cached(), 0);
        r.workload("shop", &rs, t0 + Duration::from_secs(600)).await;
        assert_eq!(reads.load(Ordering::SeqCst), 6, "read again after expiry");
    }
}
