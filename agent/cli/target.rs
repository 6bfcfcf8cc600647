//! The flags that name the pod (or network namespace) a command enters: shared by `meshtap tap`
//! and `meshtap capture`.

use std::path::PathBuf;

use clap::Args;

use crate::netns::{Roots, Target};
use crate::record::K8sMeta;

#[derive(Debug, Args)]
pub struct PodTargetArgs {
    /// The pod NAMESPACE/NAME on this node: its UID is found under --log-root, its network
    /// namespace through its processes' cgroups under --proc-root.
    #[arg(long, value_name = "NS/NAME")]
    pub pod: Option<Target>,
    /// The pod with this UID on this node.
    #[arg(long, value_name = "UID")]
    pub pod_uid: Option<String>,
    /// The network namespace of process PID.
    #[arg(long)]
    pub pid: Option<u32>,
    /// This network namespace file (`/run/netns/NAME`, `/proc/PID/ns/net`).
    #[arg(long, value_name = "PATH")]
    pub netns: Option<PathBuf>,
    /// The kubelet's pod log directory (resolves pod names and UIDs).
    #[arg(long, default_value = "/var/log/pods")]
    pub log_root: PathBuf,
    /// The host's /proc (finds a pod's processes; in a container, the host's /proc with hostPID).
    #[arg(long, default_value = "/proc")]
    pub proc_root: PathBuf,
}

/// The ids of [`PodTargetArgs`]'s mutually exclusive target flags, for a command's `ArgGroup`.
pub const TARGET_FLAGS: [&str; 4] = ["pod", "pod_uid", "pid", "netns"];

impl PodTargetArgs {
    /// The target the flags name, if any (clap's group makes it at most one).
    pub fn target(&self) -> Option<Target> {
        match (&self.pod, &self.pod_uid, self.pid, &self.netns) {
            (Some(pod), ..) => Some(pod.clone()),
            (_, Some(uid), ..) => Some(Target::PodUid(uid.clone())),
            (_, _, Some(pid), _) => Some(Target::Pid(pid)),
            (.., Some(path)) => Some(Target::Path(path.clone())),
            _ => None,
        }
    }

    pub fn roots(&self) -> Roots {
        Roots {
            proc_root: self.proc_root.clone(),
            log_root: self.log_root.clone(),
        }
    }
}

/// Record identity for a resolved pod; `container` as the source sees it.
pub fn pod_meta(pod: &crate::netns::PodIdentity, container: &str) -> K8sMeta {
    K8sMeta {
        namespace: pod.namespace.clone(),
        pod: pod.name.clone(),
        pod_uid: pod.uid.clone(),
        container: container.to_string(),
        ..K8sMeta::default()
    }
}
