//! Agent stage 0: which container log streams exist on this node, and when to look again.
//!
//! Kubelet lays container logs out as `<root>/<namespace>_<pod>_<pod-uid>/<container>/<restart>.log`
//! (see `FIELD-NOTES.md`). One [`StreamKey`] names the files of one container process: its
//! directory and restart count. [`stream_files`] lists them oldest first (rotated files by
//! timestamp, then the live file), [`scan`] finds every stream of one container name under the
//! root, and [`Watcher`] wakes the agent when something changes so it does not have to poll hard.
//!
//! The stream's files are then followed by [`crate::tail::Follower`].

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

mod watch;

pub use watch::Watcher;

/// The container whose logs meshtap reads unless told otherwise: Istio's Envoy sidecar.
pub const DEFAULT_CONTAINER: &str = "istio-proxy";

/// One container's log stream: the files of one container and one restart count (one process).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct StreamKey {
    /// The container's log directory, `<root>/<namespace>_<pod>_<pod-uid>/<container>`.
    pub dir: PathBuf,
    /// The restart count: the live file is `<restart>.log`.
    pub restart: u32,
}

impl StreamKey {
    /// The path the container runtime writes to: `<dir>/<restart>.log`.
    pub fn live_path(&self) -> PathBuf {
        self.dir.join(format!("{}.log", self.restart))
    }
}

/// One file of a stream, as [`stream_files`] found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogFile {
    pub path: PathBuf,
    pub restart: u32,
    /// The rotation timestamp (`20240101-101010`), `None` for the live file.
    pub rotated: Option<String>,
    /// True for a rotated file kubelet has compressed (`.gz`).
    pub gz: bool,
}

/// `0.log` -> (0, None); `0.log.20240101-101010[.gz]` -> (0, Some("20240101-101010")); else None.
///
/// The restart count is ASCII digits only. The rotation timestamp must be digits and `-` (kubelet
/// writes `YYYYMMDD-hhmmss`, which sorts chronologically as a string); anything else, notably
/// kubelet's `0.log.<ts>.tmp` (a gzip still being written), is not a stream file.
pub fn kubelet_name(name: &str) -> Option<(u32, Option<&str>)> {
    let (restart, rest) = name.split_once(".log")?;
    if restart.is_empty() || !restart.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let restart = restart.parse().ok()?;
    if rest.is_empty() {
        return Some((restart, None));
    }
    let rotation = rest.strip_prefix('.')?;
    let rotation = rotation.strip_suffix(".gz").unwrap_or(rotation);
    if rotation.is_empty() || !rotation.bytes().all(|b| b.is_ascii_digit() || b == b'-') {
        return None;
    }
    Some((restart, Some(rotation)))
}

/// The stream's files oldest first: rotated files by timestamp, then the live `<restart>.log`.
/// When kubelet is caught between writing `<ts>.gz` and deleting `<ts>`, both are listed, the
/// plain one first (they hold the same content; the follower reads only one).
pub fn stream_files(key: &StreamKey) -> io::Result<Vec<LogFile>> {
    let mut files = Vec::new();
    for entry in fs::read_dir(&key.dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some((restart, rotated)) = name.to_str().and_then(kubelet_name) else {
            continue;
        };
        if restart != key.restart {
            continue;
        }
        // A file that vanished since read_dir is simply not listed.
        match entry.file_type() {
            Ok(t) if t.is_dir() => continue,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        }
        let gz = rotated.is_some() && name.to_str().is_some_and(|n| n.ends_with(".gz"));
        files.push(LogFile {
            path: entry.path(),
            restart,
            rotated: rotated.map(str::to_owned),
            gz,
        });
    }
    // The live file (no timestamp) sorts after every rotated one.
    files.sort_by(|a, b| {
        let key = |f: &LogFile| (f.rotated.is_none(), f.rotated.clone(), f.gz);
        key(a).cmp(&key(b))
    });
    Ok(files)
}

/// Every stream under `root` whose container dir is named `container` (usually
/// [`DEFAULT_CONTAINER`]), sorted. A stream is listed while any of its files (live or rotated)
/// exists. Only an unreadable `root` is an error: a pod directory that vanishes or cannot be read
/// during the scan is skipped (the latter with a warning).
pub fn scan(root: &Path, container: &str) -> io::Result<Vec<StreamKey>> {
    let mut keys = Vec::new();
    for pod in fs::read_dir(root)? {
        let pod = pod?;
        if !pod.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let dir = pod.path().join(container);
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            // Not this container's pod (no such container), or the pod just went away.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                ) =>
            {
                continue
            }
            Err(e) => {
                tracing::warn!(path = %dir.display(), error = %e, "Could not list container log directory.");
                continue;
            }
        };
        let first = keys.len();
        for entry in entries.flatten() {
            let name = entry.file_name();
            if let Some((restart, _)) = name.to_str().and_then(kubelet_name) {
                let key = StreamKey {
                    dir: dir.clone(),
                    restart,
                };
                if !keys[first..].contains(&key) {
                    keys.push(key);
                }
            }
        }
    }
    keys.sort();
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubelet_names() {
        assert_eq!(kubelet_name("0.log"), Some((0, None)));
        assert_eq!(kubelet_name("12.log"), Some((12, None)));
        assert_eq!(
            kubelet_name("0.log.20240101-101010"),
            Some((0, Some("20240101-101010")))
        );
        assert_eq!(
            kubelet_name("3.log.20240101-101010.gz"),
            Some((3, Some("20240101-101010")))
        );
        for other in [
            "log",
            ".log",
            "a.log",
            "-1.log",
            "+1.log",
            "0.logx",
            "0.log.",
            "0.log.gz",
            "0.log.20240101-101010.tmp",
            "0.log.20240101-101010.gz.tmp",
            "99999999999.log",
            "envoy.txt",
        ] {
            assert_eq!(kubelet_name(other), None, "{other}");
        }
    }

    fn touch(path: &Path) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, b"x\n").unwrap();
    }

    #[test]
    fn stream_files_oldest_first_live_last() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("ns_pod_uid/istio-proxy");
        for name in [
            "0.log",
            "0.log.20240102-000000",
            "0.log.20240101-000000.gz",
            "0.log.20240102-000000.gz",
            "0.log.20231231-235959.gz",
            "0.log.20240103-000000.tmp",
            "1.log",
            "1.log.20240104-000000",
            "notes.txt",
        ] {
            touch(&dir.join(name));
        }
        fs::create_dir(dir.join("0.log.20240105-000000")).unwrap();
        let key = StreamKey {
            dir: dir.clone(),
            restart: 0,
        };
        let files = stream_files(&key).unwrap();
        let names: Vec<_> = files
            .iter()
            .map(|f| f.path.file_name().unwrap().to_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "0.log.20231231-235959.gz",
                "0.log.20240101-000000.gz",
                "0.log.20240102-000000",
                "0.log.20240102-000000.gz",
                "0.log",
            ]
        );
        assert_eq!(
            files[1],
            LogFile {
                path: dir.join("0.log.20240101-000000.gz"),
                restart: 0,
                rotated: Some("20240101-000000".into()),
                gz: true,
            }
        );
        assert_eq!(
            files[4],
            LogFile {
                path: dir.join("0.log"),
                restart: 0,
                rotated: None,
                gz: false,
            }
        );
        assert_eq!(key.live_path(), dir.join("0.log"));
        let one = stream_files(&StreamKey { dir, restart: 1 }).unwrap();
        assert_eq!(one.len(), 2);
        assert!(one[1].rotated.is_none());
    }

    #[test]
    fn scan_finds_streams_of_the_container_sorted() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        touch(&r.join("ns_b_uid2/istio-proxy/0.log"));
        touch(&r.join("ns_b_uid2/istio-proxy/1.log"));
        touch(&r.join("ns_b_uid2/app/0.log"));
        touch(&r.join("ns_a_uid1/istio-proxy/2.log.20240101-000000.gz"));
        touch(&r.join("ns_a_uid1/istio-proxy/2.log"));
        touch(&r.join("ns_c_uid3/app/0.log"));
        touch(&r.join("ns_d_uid4/istio-proxy/readme"));
        touch(&r.join("stray-file"));
        let keys = scan(r, DEFAULT_CONTAINER).unwrap();
        let want = |pod: &str, restart| StreamKey {
            dir: r.join(pod).join("istio-proxy"),
            restart,
        };
        assert_eq!(
            keys,
            [
                want("ns_a_uid1", 2),
                want("ns_b_uid2", 0),
                want("ns_b_uid2", 1)
            ]
        );
        assert_eq!(
            scan(r, "app").unwrap(),
            [
                StreamKey {
                    dir: r.join("ns_b_uid2/app"),
                    restart: 0
                },
                StreamKey {
                    dir: r.join("ns_c_uid3/app"),
                    restart: 0
                },
            ]
        );
        assert!(scan(&r.join("missing"), DEFAULT_CONTAINER).is_err());
    }

    #[test]
    fn stream_key_serde_round_trip() {
        let key = StreamKey {
            dir: PathBuf::from("/var/log/pods/ns_p_u/istio-proxy"),
            restart: 3,
        };
        let json = serde_json::to_string(&key).unwrap();
        assert_eq!(
            json,
            r#"{"dir":"/var/log/pods/ns_p_u/istio-proxy","restart":3}"#
        );
        assert_eq!(serde_json::from_str::<StreamKey>(&json).unwrap(), key);
    }
}
