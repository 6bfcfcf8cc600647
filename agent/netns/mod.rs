//! Entering a pod's network namespace, for the sources that must talk or listen from inside the
//! pod: Envoy's admin port (tap) listens on 127.0.0.1 there, and the plaintext hop between the
//! application and its sidecar crosses the pod's loopback (capture).
//!
//! A pod is found without the Kubernetes API: its UID names its cgroup (`pod<uid>` with cgroupfs,
//! `pod<uid_with_underscores>.slice` with the systemd driver), so scanning `/proc/*/cgroup` finds
//! its processes, and `/proc/<pid>/ns/net` is its network namespace. A pod named by namespace and
//! name is resolved to its UID through the kubelet's log directory names
//! (`/var/log/pods/<namespace>_<name>_<uid>`).
//!
//! [`spawn_in`] runs a closure on a dedicated thread that has joined the namespace with `setns(2)`:
//! only that thread changes namespace, and sockets it creates stay in the namespace wherever they
//! are used afterwards (an admin connection can be handed to tokio).

mod find;

use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

pub use find::{netns_of_pod_uid, pod_uid_from_log_root};

/// Which network namespace to enter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A namespace file: `/run/netns/NAME` (made by `ip netns add`) or `/proc/PID/ns/net`.
    Path(PathBuf),
    /// The namespace of a process.
    Pid(u32),
    /// The namespace of a pod's processes, by pod UID.
    PodUid(String),
    /// A pod by namespace and name, resolved to its UID through the kubelet log directory.
    Pod { namespace: String, name: String },
}

impl std::str::FromStr for Target {
    type Err = String;

    /// `NS/NAME` names a pod (as `--pod` takes it).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok(Target::Pod {
                    namespace: ns.to_string(),
                    name: name.to_string(),
                })
            }
            _ => Err(format!("expected NAMESPACE/POD, got {s:?}")),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("no pod {namespace}/{name} under {log_root} (looked for {log_root}/{namespace}_{name}_<uid>)")]
    PodNotFound {
        namespace: String,
        name: String,
        log_root: String,
    },
    #[error("no process of pod {uid} found in {proc_root}/*/cgroup (is the pod running on this node, and is the host's /proc visible: hostPID?)")]
    NoProcess { uid: String, proc_root: String },
    #[error("cannot open network namespace {path}: {source}{hint}")]
    Open {
        path: String,
        source: std::io::Error,
        hint: &'static str,
    },
    #[error("cannot enter network namespace {path}: {source}{hint}")]
    Enter {
        path: String,
        source: nix::Error,
        hint: &'static str,
    },
    #[error("cannot start a thread: {0}")]
    Thread(std::io::Error),
}

/// Where to look things up: the host's `/proc` and the kubelet log root (overridable for tests).
#[derive(Debug, Clone)]
pub struct Roots {
    pub proc_root: PathBuf,
    pub log_root: PathBuf,
}

impl Default for Roots {
    fn default() -> Self {
        Roots {
            proc_root: PathBuf::from("/proc"),
            log_root: PathBuf::from("/var/log/pods"),
        }
    }
}

/// A pod's identity as the node knows it without the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodIdentity {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

/// A target resolved to its namespace file, with a label for records (`NS/POD`, `pod-uid/UID`,
/// `pid/PID` or the namespace path) and the pod's identity when the node's log directory knows it.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub path: PathBuf,
    pub label: String,
    pub pod: Option<PodIdentity>,
}

/// Resolves `target` as [`resolve`] does, and names it.
pub fn resolve_named(target: &Target, roots: &Roots) -> Result<Resolved, NetnsError> {
    let pod = match target {
        Target::Pod { namespace, name } => Some(PodIdentity {
            namespace: namespace.clone(),
            name: name.clone(),
            uid: pod_uid_from_log_root(&roots.log_root, namespace, name)?,
        }),
        Target::PodUid(uid) => find::pod_of_uid(&roots.log_root, uid),
        Target::Pid(_) | Target::Path(_) => None,
    };
    let label = match (target, &pod) {
        (_, Some(p)) => format!("{}/{}", p.namespace, p.name),
        (Target::PodUid(uid), None) => format!("pod-uid/{uid}"),
        (Target::Pid(pid), _) => format!("pid/{pid}"),
        (Target::Path(path), _) => path.display().to_string(),
        (Target::Pod { .. }, None) => unreachable!("a pod target resolves its identity or fails"),
    };
    let path = match (target, &pod) {
        (Target::Pod { .. }, Some(p)) => netns_of_pod_uid(&roots.proc_root, &p.uid)?,
        _ => resolve(target, roots)?,
    };
    Ok(Resolved { path, label, pod })
}

/// The namespace file for `target`.
pub fn resolve(target: &Target, roots: &Roots) -> Result<PathBuf, NetnsError> {
    match target {
        Target::Path(path) => Ok(path.clone()),
        Target::Pid(pid) => Ok(roots.proc_root.join(pid.to_string()).join("ns/net")),
        Target::PodUid(uid) => netns_of_pod_uid(&roots.proc_root, uid),
        Target::Pod { namespace, name } => {
            let uid = pod_uid_from_log_root(&roots.log_root, namespace, name)?;
            netns_of_pod_uid(&roots.proc_root, &uid)
        }
    }
}

/// An open network namespace, ready to be entered by any number of threads.
#[derive(Debug)]
pub struct Netns {
    file: File,
    path: PathBuf,
}

impl Netns {
    pub fn open(path: &Path) -> Result<Netns, NetnsError> {
        let file = File::open(path).map_err(|source| NetnsError::Open {
            path: path.display().to_string(),
            hint: if source.kind() == std::io::ErrorKind::PermissionDenied {
                " (opening another process's namespace needs root or CAP_SYS_PTRACE)"
            } else {
                ""
            },
            source,
        })?;
        Ok(Netns {
            file,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Moves the calling thread into this namespace. Only for threads that never go back to
    /// serving anything else: use [`spawn_in`] unless you own the thread.
    pub fn enter_current_thread(&self) -> Result<(), NetnsError> {
        nix::sched::setns(self.file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).map_err(
            |source| NetnsError::Enter {
                path: self.path.display().to_string(),
                hint: if source == nix::Error::EPERM {
                    " (setns needs CAP_SYS_ADMIN: run as root or use the capture overlay in deploy/)"
                } else {
                    ""
                },
                source,
            },
        )
    }
}

/// Runs `f` on a new thread named `name` that has entered `netns`. The closure's result comes
/// back through the join handle; entering fails before `f` runs.
pub fn spawn_in<F, T>(
    netns: Netns,
    name: &str,
    f: F,
) -> Result<std::thread::JoinHandle<Result<T, NetnsError>>, NetnsError>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            netns.enter_current_thread()?;
            Ok(f())
        })
        .map_err(NetnsError::Thread)
}

/// Linux capabilities meshtap's namespace sources may need, by name.
pub const SETNS: caps::Capability = caps::Capability::CAP_SYS_ADMIN;

/// The capabilities in `needed` this process does not have in its effective set, by name
/// (`CAP_NET_RAW`, ...): the message to show instead of a bare EPERM.
pub fn missing_capabilities(needed: &[caps::Capability]) -> Vec<String> {
    needed
        .iter()
        .filter(|c| !caps::has_cap(None, caps::CapSet::Effective, **c).unwrap_or(false))
        .map(|c| c.to_string())
        .collect()
}

/// What `what` (a command or source) needs and this process lacks, with why, as one message;
/// `None` when nothing is missing. `needed`: each capability with the reason it is needed.
pub fn missing_capabilities_message(
    what: &str,
    needed: &[(caps::Capability, &str)],
) -> Option<String> {
    let caps: Vec<caps::Capability> = needed.iter().map(|(c, _)| *c).collect();
    let missing = missing_capabilities(&caps);
    if missing.is_empty() {
        return None;
    }
    let why: Vec<String> = needed
        .iter()
        .filter(|(c, _)| missing.contains(&c.to_string()))
        .map(|(c, why)| format!("{c} (missing) {why}"))
        .collect();
    Some(format!(
        "{what} needs {}; run as root or apply deploy/overlays/capture",
        why.join(", ")
    ))
}

/// The inode of the network namespace the calling thread is in (to tell namespaces apart).
pub fn current_thread_netns_inode() -> std::io::Result<u64> {
    use std::os::unix::fs::MetadataExt as _;
    Ok(std::fs::metadata("/proc/thread-self/ns/net")?.ino())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_are_named_namespace_slash_name() {
        assert_eq!(
            "shop/cart-1".parse::<Target>(),
            Ok(Target::Pod {
                namespace: "shop".into(),
                name: "cart-1".into()
            })
        );
        for bad in ["cart", "/cart", "shop/", "a/b/c", ""] {
            assert!(bad.parse::<Target>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_missing_namespace_file_is_a_clear_error() {
        let e = Netns::open(Path::new("/nonexistent/ns/net")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/ns/net"), "{e}");
    }

    #[test]
    fn own_namespace_can_be_entered_on_a_dedicated_thread() {
        // Entering the namespace we are already in works wherever setns is permitted; where it
        // is not (no CAP_SYS_ADMIN), the error must say so.
        let ours = current_thread_netns_inode().unwrap();
        let netns = Netns::open(Path::new("/proc/self/ns/net")).unwrap();
        match spawn_in(netns, "netns-test", current_thread_netns_inode)
            .unwrap()
            .join()
            .unwrap()
        {
            Ok(inode) => assert_eq!(inode.unwrap(), ours),
            Err(e) => {
                assert!(missing_capabilities(&[SETNS]).contains(&"CAP_SYS_ADMIN".to_string()));
                assert!(e.to_string().contains("CAP_SYS_ADMIN"), "{e}");
            }
        }
    }
}
