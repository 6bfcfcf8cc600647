//! Pod identity from `/var/log/pods/<namespace>_<pod>_<uid>/<container>/<restart>.log`.
//! Namespace and pod names are DNS labels/subdomains and uids are UUIDs, none of which may contain
//! `_`, so the directory name splits unambiguously.

use std::path::Path;

use crate::record::K8sMeta;

/// The pod and container a kubelet log path belongs to, or `None` for any other path.
pub fn meta_from_log_path(path: &Path) -> Option<K8sMeta> {
    let container_dir = path.parent()?;
    let pod_dir = container_dir.parent()?;
    let container = container_dir.file_name()?.to_str()?;
    let mut parts = pod_dir.file_name()?.to_str()?.split('_');
    let (namespace, pod, pod_uid) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some()
        || [namespace, pod, pod_uid, container]
            .iter()
            .any(|s| s.is_empty())
    {
        return None;
    }
    Some(K8sMeta {
        namespace: namespace.to_string(),
        pod: pod.to_string(),
        pod_uid: pod_uid.to_string(),
        container: container.to_string(),
        ..K8sMeta::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_kubelet_paths() {
        let m = meta_from_log_path(Path::new(
            "/var/log/pods/default_productpage-v1-7d9f_0c1a2b3c-1111-2222-3333-444455556666/istio-proxy/0.log.20240101-101010.gz",
        ))
        .unwrap();
        assert_eq!(m.namespace, "default");
        assert_eq!(m.pod, "productpage-v1-7d9f");
        assert_eq!(m.pod_uid, "0c1a2b3c-1111-2222-3333-444455556666");
        assert_eq!(m.container, "istio-proxy");
    }

    #[test]
    fn other_paths_have_no_identity() {
        assert_eq!(meta_from_log_path(Path::new("/tmp/envoy.log")), None);
        assert_eq!(
            meta_from_log_path(Path::new("/a/b_c/istio-proxy/0.log")),
            None
        );
        assert_eq!(meta_from_log_path(Path::new("0.log")), None);
    }
}
