//! The pods of this node as the enrichment needs them: one small [`PodInfo`] per pod UID, trimmed
//! from the API's `Pod` as soon as it arrives (a pod object is kilobytes, mostly managed fields
//! and the spec; what is kept is a few strings), with deletion delayed by a grace period so the
//! last lines a pod logged are still enriched when the agent reads them after the pod is gone.
//!
//! The watcher task writes and the reader thread reads: a `std::sync::RwLock` around a map of
//! `Arc`s keeps each critical section to one map operation.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;

use super::owner::{controller_of, OwnerRef};
use super::select::Selection;
use crate::record::Workload;

/// Which pod labels are copied into records.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelFilter {
    /// `*` was given: every label.
    pub all: bool,
    pub keys: BTreeSet<String>,
}

impl LabelFilter {
    /// From the `kubernetes.labels` list (`*` keeps every label).
    pub fn new(labels: &[String]) -> Self {
        LabelFilter {
            all: labels.iter().any(|l| l == "*"),
            keys: labels.iter().filter(|l| *l != "*").cloned().collect(),
        }
    }

    pub fn keeps(&self, key: &str) -> bool {
        self.all || self.keys.contains(key)
    }
}

/// What the agent keeps of a pod: exactly what records and selection use.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// Labels kept by the allow-list.
    pub labels: BTreeMap<String, String>,
    /// The controller at the top of the owner chain, once resolved.
    pub workload: Option<Workload>,
    pub service_account: Option<String>,
    pub node: Option<String>,
    pub pod_ip: Option<String>,
    /// Whether the label selector and the opt-out annotation select this pod (decided here, from
    /// all its labels and annotations, so neither has to be kept).
    pub selected: bool,
    /// The pod's controller owner reference, to tell whether `workload` must be resolved again.
    pub owner: Option<OwnerRef>,
    /// False while the owner chain could not be followed (the API failed): retried on the pod's
    /// next event.
    pub owner_resolved: bool,
}

impl PodInfo {
    /// Trims an API pod to what is kept; `workload` is filled by the owner resolution.
    pub fn from_pod(pod: Pod, labels: &LabelFilter, selection: &Selection) -> PodInfo {
        let meta = pod.metadata;
        let all_labels = meta.labels.unwrap_or_default();
        let annotations = meta.annotations.unwrap_or_default();
        let selected = selection.pod_selected(&all_labels, &annotations);
        let mut kept = all_labels;
        kept.retain(|k, _| labels.keeps(k));
        let owner = controller_of(meta.owner_references.as_deref().unwrap_or_default());
        let spec = pod.spec.unwrap_or_default();
        let status = pod.status.unwrap_or_default();
        // A static pod's log directory is named after the static pod's UID (its config hash),
        // which the API shows on the mirror pod as this annotation, not as the mirror's UID.
        let uid = annotations
            .get(MIRROR_ANNOTATION)
            .filter(|hash| !hash.is_empty())
            .cloned()
            .or(meta.uid)
            .unwrap_or_default();
        PodInfo {
            namespace: meta.namespace.unwrap_or_default(),
            name: meta.name.unwrap_or_default(),
            uid,
            labels: kept,
            workload: None,
            service_account: spec.service_account_name.filter(|s| !s.is_empty()),
            node: spec.node_name.filter(|s| !s.is_empty()),
            pod_ip: status.pod_ip.filter(|s| !s.is_empty()),
            selected,
            owner_resolved: owner.is_none(),
            owner,
        }
    }
}

/// Set by the kubelet on the API's mirror of a static pod: the static pod's UID.
const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

struct Entry {
    pod: Arc<PodInfo>,
    /// When the pod was seen deleted; it is forgotten `grace` later.
    deleted_at: Option<Instant>,
}

#[derive(Default)]
struct Inner {
    pods: HashMap<String, Entry>,
    /// During a re-list: the UIDs listed so far. Pods not listed are gone.
    listing: Option<HashSet<String>>,
}

/// Pods by UID, with delayed deletion.
pub struct PodCache {
    inner: RwLock<Inner>,
    grace: Duration,
}

impl PodCache {
    /// A deleted pod stays `grace` long.
    pub fn new(grace: Duration) -> Self {
        PodCache {
            inner: RwLock::new(Inner::default()),
            grace,
        }
    }

    // A panic elsewhere while holding the lock leaves a map of whole entries: keep using it.
    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// The pod with this UID, live or deleted within the grace period.
    pub fn get(&self, uid: &str) -> Option<Arc<PodInfo>> {
        self.read().pods.get(uid).map(|e| e.pod.clone())
    }

    /// Whether the pod with this UID is known and was deleted.
    pub fn is_deleted(&self, uid: &str) -> bool {
        self.read()
            .pods
            .get(uid)
            .is_some_and(|e| e.deleted_at.is_some())
    }

    /// A pod added or changed (live).
    pub fn apply(&self, pod: PodInfo) {
        let mut inner = self.write();
        if let Some(listing) = inner.listing.as_mut() {
            listing.insert(pod.uid.clone());
        }
        inner.pods.insert(
            pod.uid.clone(),
            Entry {
                pod: Arc::new(pod),
                deleted_at: None,
            },
        );
    }

    /// A pod deleted at `now`: kept as it was last seen (the deleted object may lack its IP),
    /// or as given if it was not known.
    pub fn delete(&self, pod: PodInfo, now: Instant) {
        let mut inner = self.write();
        let entry = inner.pods.entry(pod.uid.clone()).or_insert_with(|| Entry {
            pod: Arc::new(pod),
            deleted_at: None,
        });
        entry.deleted_at.get_or_insert(now);
    }

    /// A (re-)list begins: what it does not list is gone once it ends.
    pub fn begin_list(&self) {
        self.write().listing = Some(HashSet::new());
    }

    /// A (re-)list ended at `now`: live pods it did not list were deleted meanwhile.
    pub fn end_list(&self, now: Instant) {
        let mut inner = self.write();
        let Some(listed) = inner.listing.take() else {
            return;
        };
        for (uid, entry) in inner.pods.iter_mut() {
            if entry.deleted_at.is_none() && !listed.contains(uid) {
                entry.deleted_at = Some(now);
            }
        }
    }

    /// Forgets pods deleted at least the grace period before `now`; how many.
    pub fn purge(&self, now: Instant) -> usize {
        let grace = self.grace;
        let mut inner = self.write();
        let before = inner.pods.len();
        inner.pods.retain(|_, e| {
            e.deleted_at
                .is_none_or(|at| now.saturating_duration_since(at) < grace)
        });
        before - inner.pods.len()
    }

    /// (live, deleted but kept) pods.
    pub fn counts(&self) -> (usize, usize) {
        let inner = self.read();
        let deleted = inner
            .pods
            .values()
            .filter(|e| e.deleted_at.is_some())
            .count();
        (inner.pods.len() - deleted, deleted)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;

    /// A pod as the API serves it (trimmed here to what matters, but with the noise a real one
    /// has: managed fields, containers, conditions).
    pub(crate) fn pod_json(uid: &str, owner: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": "reviews-v1-6b8d5c7f9-x2x7q",
                "namespace": "shop",
                "uid": uid,
                "resourceVersion": "1234",
                "labels": {"app": "reviews", "version": "v1", "pod-template-hash": "6b8d5c7f9",
                           "security.istio.io/tlsMode": "istio"},
                "annotations": {"sidecar.istio.io/status": "{\"containers\":[\"istio-proxy\"]}",
                                "meshtap.io/capture": "true"},
                "ownerReferences": [owner],
                "managedFields": [{"manager": "kube-controller-manager", "operation": "Update",
                                   "apiVersion": "v1", "fieldsType": "FieldsV1",
                                   "fieldsV1": {"f:metadata": {"f:labels": {}}}}]
            },
            "spec": {
                "nodeName": "node-a",
                "serviceAccountName": "bookinfo-reviews",
                "containers": [{"name": "reviews", "image": "reviews:1"},
                               {"name": "istio-proxy", "image": "proxyv2:1.24"}]
            },
            "status": {"phase": "Running", "podIP": "10.244.1.17",
                       "conditions": [{"type": "Ready", "status": "True"}]}
        }))
        .unwrap()
    }

    pub(crate) fn rs_owner(name: &str) -> serde_json::Value {
        serde_json::json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": name,
                           "uid": "rs-uid-1", "controller": true, "blockOwnerDeletion": true})
    }

    fn info(uid: &str) -> PodInfo {
        PodInfo {
            uid: uid.to_string(),
            ..PodInfo::default()
        }
    }

    #[test]
    fn trims_to_the_fields_used() {
        let pod = pod_json("u1", rs_owner("reviews-v1-6b8d5c7f9"));
        let filter = LabelFilter::new(&["app".into(), "version".into(), "missing".into()]);
        let p = PodInfo::from_pod(pod.clone(), &filter, &Selection::default());
        assert_eq!(p.namespace, "shop");
        assert_eq!(p.name, "reviews-v1-6b8d5c7f9-x2x7q");
        assert_eq!(p.uid, "u1");
        assert_eq!(
            p.labels.keys().collect::<Vec<_>>(),
            ["app", "version"],
            "only allow-listed labels"
        );
        assert_eq!(p.service_account.as_deref(), Some("bookinfo-reviews"));
        assert_eq!(p.node.as_deref(), Some("node-a"));
        assert_eq!(p.pod_ip.as_deref(), Some("10.244.1.17"));
        assert!(p.selected);
        assert_eq!(p.owner.as_ref().unwrap().kind, "ReplicaSet");
        assert!(
            !p.owner_resolved,
            "a ReplicaSet owner still needs resolving"
        );
        assert_eq!(p.workload, None);

        let all = PodInfo::from_pod(
            pod.clone(),
            &LabelFilter::new(&["*".into()]),
            &Selection::default(),
        );
        assert_eq!(all.labels.len(), 4);

        // Selection sees every label and annotation, even those not kept.
        let selection = Selection {
            labels: super::super::select::parse_selector("pod-template-hash").unwrap(),
            opt_out_annotation: Some("meshtap.io/capture".into()),
            ..Selection::default()
        };
        assert!(PodInfo::from_pod(pod.clone(), &filter, &selection).selected);
        let mut opted_out = pod;
        opted_out
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert("meshtap.io/capture".into(), "disabled".into());
        assert!(!PodInfo::from_pod(opted_out, &filter, &selection).selected);
    }

    #[test]
    fn mirror_pods_are_keyed_like_their_log_directory() {
        let mut pod = pod_json(
            "mirror-uid",
            serde_json::json!({"apiVersion": "v1",
            "kind": "Node", "name": "node-a", "uid": "n", "controller": true}),
        );
        pod.metadata.annotations.as_mut().unwrap().insert(
            MIRROR_ANNOTATION.into(),
            "5e2a4a3f0bb8f6e2f4c5a1b2c3d4e5f6".into(),
        );
        let p = PodInfo::from_pod(pod, &LabelFilter::default(), &Selection::default());
        assert_eq!(p.uid, "5e2a4a3f0bb8f6e2f4c5a1b2c3d4e5f6");
        assert_eq!(p.owner.unwrap().kind, "Node");
    }

    #[test]
    fn deleted_pods_stay_for_the_grace_period() {
        let cache = PodCache::new(Duration::from_secs(60));
        let t0 = Instant::now();
        cache.apply(info("a"));
        cache.apply(info("b"));
        assert_eq!(cache.counts(), (2, 0));
        cache.delete(info("a"), t0);
        assert!(cache.get("a").is_some(), "kept after deletion");
        assert!(cache.is_deleted("a"));
        assert_eq!(cache.counts(), (1, 1));
        assert_eq!(cache.purge(t0 + Duration::from_secs(59)), 0);
        assert!(cache.get("a").is_some());
        // A second delete does not extend the grace period.
        cache.delete(info("a"), t0 + Duration::from_secs(30));
        assert_eq!(cache.purge(t0 + Duration::from_secs(60)), 1);
        assert!(cache.get("a").is_none());
        assert!(cache.get("b").is_some());
        // A pod first seen deleted is kept too (its lines may still be unread).
        cache.delete(info("c"), t0);
        assert!(cache.get("c").is_some());
    }

    #[test]
    fn delete_keeps_what_was_known() {
        let cache = PodCache::new(Duration::from_secs(60));
        let mut live = info("a");
        live.pod_ip = Some("10.0.0.1".into());
        cache.apply(live);
        cache.delete(info("a"), Instant::now());
        assert_eq!(cache.get("a").unwrap().pod_ip.as_deref(), Some("10.0.0.1"));
    }

    #[test]
    fn a_relist_deletes_what_it_does_not_list() {
        let cache = PodCache::new(Duration::from_secs(60));
        let t0 = Instant::now();
        cache.apply(info("a"));
        cache.apply(info("b"));
        cache.begin_list();
        cache.apply(info("b"));
        cache.apply(info("c"));
        cache.end_list(t0);
        assert!(cache.is_deleted("a"));
        assert!(!cache.is_deleted("b") && !cache.is_deleted("c"));
        assert_eq!(cache.counts(), (2, 1));
        assert_eq!(cache.purge(t0 + Duration::from_secs(60)), 1);
        // An end without a begin changes nothing.
        cache.end_list(t0);
        assert_eq!(cache.counts(), (2, 0));
    }
}
