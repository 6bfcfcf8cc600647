//! Finding a pod's processes and UID on the node, without the Kubernetes API.

use std::path::{Path, PathBuf};

use super::NetnsError;

/// True when a `/proc/<pid>/cgroup` text places the process in the pod with `uid`: cgroupfs
/// paths say `pod<uid>`, the systemd driver says `pod<uid with '-' as '_'>.slice`.
pub(super) fn cgroup_has_pod(cgroup: &str, uid: &str) -> bool {
    let cgroupfs = format!("pod{uid}");
    let systemd = format!("pod{}.slice", uid.replace('-', "_"));
    cgroup.lines().any(|line| {
        line.split('/')
            .any(|part| part == cgroupfs || part.ends_with(&systemd))
    })
}

/// `/proc/<pid>/ns/net` of the first process (lowest pid) of the pod with `uid`.
pub fn netns_of_pod_uid(proc_root: &Path, uid: &str) -> Result<PathBuf, NetnsError> {
    let not_found = || NetnsError::NoProcess {
        uid: uid.to_string(),
        proc_root: proc_root.display().to_string(),
    };
    let entries = std::fs::read_dir(proc_root).map_err(|_| not_found())?;
    let mut pids: Vec<u32> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    for pid in pids {
        let dir = proc_root.join(pid.to_string());
        // Processes come and go while we scan: an unreadable entry is simply not the one.
        let Ok(cgroup) = std::fs::read_to_string(dir.join("cgroup")) else {
            continue;
        };
        if cgroup_has_pod(&cgroup, uid) {
            return Ok(dir.join("ns/net"));
        }
    }
    Err(not_found())
}

/// The UID of pod `namespace/name` from the kubelet's log directory
/// `<log_root>/<namespace>_<name>_<uid>`; the newest directory when the name was reused.
pub fn pod_uid_from_log_root(
    log_root: &Path,
    namespace: &str,
    name: &str,
) -> Result<String, NetnsError> {
    let prefix = format!("{namespace}_{name}_");
    let mut found: Vec<(std::time::SystemTime, String)> = std::fs::read_dir(log_root)
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let e = e.ok()?;
            let file_name = e.file_name();
            let uid = file_name.to_str()?.strip_prefix(&prefix)?;
            if uid.is_empty() || uid.contains('_') {
                return None;
            }
            let modified = e.metadata().and_then(|m| m.modified()).ok()?;
            Some((modified, uid.to_string()))
        })
        .collect();
    found.sort();
    found
        .pop()
        .map(|(_, uid)| uid)
        .ok_or_else(|| NetnsError::PodNotFound {
            namespace: namespace.to_string(),
            name: name.to_string(),
            log_root: log_root.display().to_string(),
        })
}

/// The pod whose kubelet log directory `<log_root>/<namespace>_<name>_<uid>` has this UID.
pub(super) fn pod_of_uid(log_root: &Path, uid: &str) -> Option<super::PodIdentity> {
    let suffix = format!("_{uid}");
    std::fs::read_dir(log_root).ok()?.find_map(|entry| {
        let dir = entry.ok()?.file_name().into_string().ok()?;
        let (namespace, name) = dir.strip_suffix(&suffix)?.split_once('_')?;
        Some(super::PodIdentity {
            namespace: namespace.to_string(),
            name: name.to_string(),
            uid: uid.to_string(),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "0c1a2b3c-1111-2222-3333-444455556666";

    #[test]
    fn cgroup_paths_of_both_drivers_name_the_pod() {
        let cgroupfs = "0::/kubepods/burstable/pod0c1a2b3c-1111-2222-3333-444455556666/4f1c2d\n";
        let systemd = "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0c1a2b3c_1111_2222_3333_444455556666.slice/cri-containerd-4f1c.scope\n";
        let v1 = "12:memory:/kubepods/besteffort/pod0c1a2b3c-1111-2222-3333-444455556666/abc\n11:cpu:/\n";
        for text in [cgroupfs, systemd, v1] {
            assert!(cgroup_has_pod(text, UID), "{text}");
        }
        assert!(!cgroup_has_pod(
            "0::/system.slice/containerd.service\n",
            UID
        ));
        assert!(!cgroup_has_pod(
            cgroupfs,
            "0c1a2b3c-1111-2222-3333-444455556667"
        ));
    }

    #[test]
    fn processes_are_found_by_pod_uid_in_a_proc_tree() {
        let proc_root = tempfile::tempdir().unwrap();
        for (pid, cgroup) in [
            ("1", "0::/init.scope\n"),
            (
                "40",
                "0::/kubepods/burstable/pod0c1a2b3c-1111-2222-3333-444455556666/app\n",
            ),
            (
                "7",
                "0::/kubepods/burstable/pod0c1a2b3c-1111-2222-3333-444455556666/pause\n",
            ),
            (
                "self",
                "0::/kubepods/burstable/pod0c1a2b3c-1111-2222-3333-444455556666/x\n",
            ),
        ] {
            std::fs::create_dir(proc_root.path().join(pid)).unwrap();
            std::fs::write(proc_root.path().join(pid).join("cgroup"), cgroup).unwrap();
        }
        std::fs::create_dir(proc_root.path().join("99")).unwrap(); // exited: no cgroup file
        assert_eq!(
            netns_of_pod_uid(proc_root.path(), UID).unwrap(),
            proc_root.path().join("7/ns/net")
        );
        let e = netns_of_pod_uid(proc_root.path(), "other").unwrap_err();
        assert!(e.to_string().contains("no process of pod other"), "{e}");
    }

    #[test]
    fn pod_names_resolve_through_the_log_root() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join(format!("shop_cart-1_{UID}"))).unwrap();
        std::fs::create_dir(root.path().join("shop_cart-10_ffff")).unwrap();
        assert_eq!(
            pod_uid_from_log_root(root.path(), "shop", "cart-1").unwrap(),
            UID
        );
        let e = pod_uid_from_log_root(root.path(), "shop", "cart-2").unwrap_err();
        assert!(e.to_string().contains("no pod shop/cart-2"), "{e}");
        let pod = pod_of_uid(root.path(), UID).unwrap();
        assert_eq!(
            (pod.namespace.as_str(), pod.name.as_str()),
            ("shop", "cart-1")
        );
        assert_eq!(pod_of_uid(root.path(), "0000"), None);
    }
}
