//! The follower against real files: renames, gzip, truncation, deletion, restarts.

use super::*;
use std::fs::OpenOptions;
use std::io::Write;

use flate2::write::GzEncoder;
use flate2::Compression;

use crate::read::lines::CHUNK;

const MAX: usize = 64 * 1024;

/// A pod's container log directory in a temporary root.
struct Pod {
    root: tempfile::TempDir,
    dir: PathBuf,
}

impl Pod {
    fn new() -> Self {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("ns_pod_uid/istio-proxy");
        fs::create_dir_all(&dir).unwrap();
        Self { root, dir }
    }

    fn key(&self, restart: u32) -> StreamKey {
        StreamKey {
            dir: self.dir.clone(),
            restart,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn live(&self) -> PathBuf {
        self.path("0.log")
    }

    fn follower(&self, start: Option<Position>) -> Follower {
        Follower::new(self.key(0), start, MAX)
    }

    /// Renames the live file to `0.log.<ts>`, as kubelet rotates.
    fn rotate(&self, ts: &str) -> PathBuf {
        let to = self.path(&format!("0.log.{ts}"));
        fs::rename(self.live(), &to).unwrap();
        to
    }
}

fn append(path: &Path, bytes: &[u8]) {
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    f.write_all(bytes).unwrap();
}

fn gz_bytes(data: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::new(), Compression::fast());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

/// Compresses a rotated file the way kubelet does: `<f>.tmp`, renamed to `<f>.gz`, `<f>` deleted.
fn gzip(path: &Path) -> PathBuf {
    let data = fs::read(path).unwrap();
    let tmp = PathBuf::from(format!("{}.tmp", path.display()));
    let gz = PathBuf::from(format!("{}.gz", path.display()));
    fs::write(&tmp, gz_bytes(&data)).unwrap();
    fs::rename(&tmp, &gz).unwrap();
    fs::remove_file(path).unwrap();
    gz
}

fn truncate(path: &Path) {
    OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(0)
        .unwrap();
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Ev {
    File {
        name: String,
        fp: u64,
        offset: u64,
    },
    Line {
        text: String,
        offset: u64,
        end: u64,
        truncated: bool,
        terminated: bool,
    },
    Lost {
        name: String,
        bytes: Option<u64>,
        reason: &'static str,
    },
}

fn name(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

fn owned(ev: TailEvent<'_>) -> Ev {
    match ev {
        TailEvent::File {
            path,
            fingerprint,
            offset,
        } => Ev::File {
            name: name(path),
            fp: fingerprint,
            offset,
        },
        TailEvent::Line(l) => Ev::Line {
            text: String::from_utf8_lossy(l.bytes).into_owned(),
            offset: l.offset,
            end: l.end,
            truncated: l.truncated,
            terminated: l.terminated,
        },
        TailEvent::Lost {
            path,
            bytes,
            reason,
        } => Ev::Lost {
            name: name(path),
            bytes,
            reason,
        },
    }
}

/// One poll with a large budget.
fn poll(f: &mut Follower) -> Vec<Ev> {
    let mut evs = Vec::new();
    f.poll(1 << 30, &mut |e| evs.push(owned(e))).unwrap();
    evs
}

/// Polls until nothing new; every poll after the first must make progress or hand nothing out.
fn drain(f: &mut Follower) -> Vec<Ev> {
    let mut evs = Vec::new();
    while f.poll(1 << 30, &mut |e| evs.push(owned(e))).unwrap() > 0 {}
    evs
}

/// The events in a compact form: `file:<name>@<offset>`, the line text (`<text>~` when
/// unterminated, `<text>!` when truncated), `lost:<name>:<reason>`.
fn brief(evs: &[Ev]) -> Vec<String> {
    evs.iter()
        .map(|e| match e {
            Ev::File { name, offset, .. } => format!("file:{name}@{offset}"),
            Ev::Line {
                text,
                truncated,
                terminated,
                ..
            } => format!(
                "{text}{}{}",
                if *truncated { "!" } else { "" },
                if *terminated { "" } else { "~" }
            ),
            Ev::Lost { name, reason, .. } => format!("lost:{name}:{reason}"),
        })
        .collect()
}

fn fp(first_line: &str) -> u64 {
    fingerprint(first_line.as_bytes())
}

#[test]
fn follower_can_move_to_another_thread() {
    fn send<T: Send>() {}
    send::<Follower>();
}

#[test]
fn append_only_file_read_in_several_polls_with_partial_lines() {
    let pod = Pod::new();
    let mut f = pod.follower(None);
    assert_eq!(f.poll(1 << 20, &mut |_| panic!("no file yet")).unwrap(), 0);
    assert_eq!(f.position(), None);
    assert!(!f.is_finished());

    // The first line is incomplete: not even the File event yet.
    append(&pod.live(), b"on");
    assert_eq!(poll(&mut f), []);
    assert_eq!(f.backlog(), 2);
    append(&pod.live(), b"e\ntw");
    assert_eq!(
        poll(&mut f),
        [
            Ev::File {
                name: "0.log".into(),
                fp: fp("one"),
                offset: 0
            },
            Ev::Line {
                text: "one".into(),
                offset: 0,
                end: 4,
                truncated: false,
                terminated: true
            }
        ]
    );
    assert_eq!(
        f.position(),
        Some(Position {
            fingerprint: fp("one"),
            offset: 4
        })
    );
    assert_eq!(f.backlog(), 2);
    assert_eq!(f.current_path(), Some(pod.live().as_path()));
    // A slow writer finishes the line in several writes.
    append(&pod.live(), b"o");
    assert_eq!(poll(&mut f), []);
    append(&pod.live(), b"\nthree\n");
    assert_eq!(
        poll(&mut f),
        [
            Ev::Line {
                text: "two".into(),
                offset: 4,
                end: 8,
                truncated: false,
                terminated: true
            },
            Ev::Line {
                text: "three".into(),
                offset: 8,
                end: 14,
                truncated: false,
                terminated: true
            }
        ]
    );
    assert_eq!(f.poll(1 << 20, &mut |_| panic!("nothing new")).unwrap(), 0);
    assert_eq!(f.backlog(), 0);
    assert!(!f.is_finished());
}

#[test]
fn budget_limits_one_poll() {
    let pod = Pod::new();
    let line = "x".repeat(99);
    for _ in 0..10_000 {
        append(&pod.live(), format!("{line}\n").as_bytes());
    }
    let mut f = pod.follower(None);
    let mut lines = 0;
    let n = f
        .poll(200_000, &mut |e| {
            lines += usize::from(matches!(e, TailEvent::Line(_)))
        })
        .unwrap();
    assert!((200_000..200_000 + 2 * CHUNK).contains(&n), "{n}");
    assert!(lines < 10_000);
    while f
        .poll(200_000, &mut |e| {
            lines += usize::from(matches!(e, TailEvent::Line(_)))
        })
        .unwrap()
        > 0
    {}
    assert_eq!(lines, 10_000);
}

#[test]
fn lines_longer_than_max_are_truncated() {
    let pod = Pod::new();
    append(&pod.live(), b"abcdefgh\nxy\nlonger-unfinished");
    let mut f = Follower::new(pod.key(0), None, 4);
    assert_eq!(brief(&poll(&mut f)), ["file:0.log@0", "abcd!", "xy"]);
    // The overlong unfinished line waits for its end like any other.
    append(&pod.live(), b"-line\n");
    assert_eq!(
        poll(&mut f),
        [Ev::Line {
            text: "long".into(),
            offset: 12,
            end: 35,
            truncated: true,
            terminated: true
        }]
    );
}

#[test]
fn line_of_50_mb_is_truncated_with_bounded_memory() {
    const MIB: usize = 1 << 20;
    let pod = Pod::new();
    let mut f = Follower::new(pod.key(0), None, MIB);
    append(&pod.live(), b"first\n");
    assert_eq!(brief(&poll(&mut f)), ["file:0.log@0", "first"]);
    // Written in pieces while the follower keeps polling, as a runaway process would.
    let piece = vec![b'x'; 5 * MIB];
    for _ in 0..10 {
        append(&pod.live(), &piece);
        assert_eq!(drain(&mut f), []);
        assert!(
            f.lines.capacity() <= MIB + 2 * CHUNK,
            "{}",
            f.lines.capacity()
        );
    }
    append(&pod.live(), b"\nafter\n");
    let evs = drain(&mut f);
    assert_eq!(evs.len(), 2, "{:?}", brief(&evs));
    let Ev::Line {
        text,
        offset,
        end,
        truncated,
        terminated,
    } = &evs[0]
    else {
        panic!("{:?}", evs[0]);
    };
    assert_eq!(text.len(), MIB);
    assert!(*truncated && *terminated);
    assert_eq!((*offset, *end), (6, 6 + 50 * MIB as u64 + 1));
    assert_eq!(
        evs[1],
        Ev::Line {
            text: "after".into(),
            offset: 7 + 50 * MIB as u64,
            end: 13 + 50 * MIB as u64,
            truncated: false,
            terminated: true
        }
    );
    assert!(f.lines.capacity() <= MIB + 2 * CHUNK);
}

#[test]
fn rotation_by_rename_reads_the_old_file_to_its_end_then_the_new_one() {
    let pod = Pod::new();
    // The runtime's descriptor: it keeps writing to the renamed file until it reopens.
    let mut runtime = OpenOptions::new()
        .create(true)
        .append(true)
        .open(pod.live())
        .unwrap();
    runtime.write_all(b"a1\na2\n").unwrap();
    let mut f = pod.follower(None);
    assert_eq!(brief(&poll(&mut f)), ["file:0.log@0", "a1", "a2"]);
    let rotated = pod.rotate("20240101-000001");
    runtime.write_all(b"a3\na4-").unwrap();
    // No live file yet: the renamed file may still grow, its partial line waits.
    assert_eq!(brief(&poll(&mut f)), ["a3"]);
    runtime.write_all(b"end\na5\n").unwrap();
    // The runtime reopens: a new live file. The last writes to the old one are read first.
    let mut runtime = OpenOptions::new()
        .create(true)
        .append(true)
        .open(pod.live())
        .unwrap();
    runtime.write_all(b"b1\nb2\n").unwrap();
    let evs = poll(&mut f);
    assert_eq!(
        brief(&evs),
        ["a4-end", "a5", "file:0.log@0", "b1", "b2"],
        "{evs:?}"
    );
    assert_eq!(
        evs[2],
        Ev::File {
            name: "0.log".into(),
            fp: fp("b1"),
            offset: 0
        }
    );
    assert!(rotated.exists());
    runtime.write_all(b"b3\n").unwrap();
    assert_eq!(brief(&poll(&mut f)), ["b3"]);
}

#[test]
fn partial_last_line_of_a_rotated_file_is_handed_out_unterminated() {
    let pod = Pod::new();
    append(&pod.live(), b"a1\na2-cut");
    let mut f = pod.follower(None);
    assert_eq!(brief(&poll(&mut f)), ["file:0.log@0", "a1"]);
    pod.rotate("20240101-000001");
    append(&pod.live(), b"b1\n");
    let evs = poll(&mut f);
    assert_eq!(brief(&evs), ["a2-cut~", "file:0.log@0", "b1"]);
    assert_eq!(
        evs[0],
        Ev::Line {
            text: "a2-cut".into(),
            offset: 3,
            end: 9,
            truncated: false,
            terminated: false
        }
    );
}

#[test]
fn several_rotations_while_behind_are_read_in_order_including_gzipped_ones() {
    let pod = Pod::new();
    append(&pod.live(), b"a1\na2\n");
    let mut f = pod.follower(None);
    assert_eq!(brief(&poll(&mut f)), ["file:0.log@0", "a1", "a2"]);
    append(&pod.live(), b"a3\n");
    // Three rotations without a poll; before each, kubelet gzips the older rotated files.
    let ts1 = pod.rotate("20240101-000001");
    append(&pod.live(), b"b1\nb2\n");
    gzip(&ts1);
    let ts2 = pod.rotate("20240101-000002");
    append(&pod.live(), b"c1\n");
    gzip(&ts2);
    pod.rotate("20240101-000003");
    append(&pod.live(), b"d1\n");
    let evs = drain(&mut f);
    assert_eq!(
        brief(&evs),
        [
            "a3",
            "file:0.log.20240101-000002.gz@0",
            "b1",
            "b2",
            "file:0.log.20240101-000003@0",
            "c1",
            "file:0.log@0",
            "d1"
        ]
    );
    assert_eq!(
        f.position(),
        Some(Position {
            fingerprint: fp("d1"),
            offset: 3
        })
    );
    // Nothing is read twice, however often it is polled.
    append(&pod.live(), b"d2\n");
    assert_eq!(brief(&drain(&mut f)), ["d2"]);
}

#[test]
fn file_renamed_and_gzipped_while_open_is_read_once() {
    let pod = Pod::new();
    append(&pod.live(), b"a1\n");
    let mut f = pod.follower(None);
    assert_eq!(brief(&poll(&mut f)), ["file:0.log@0", "a1"]);
    append(&pod.live(), b"a2\na3\n");
    let ts1 = pod.rotate("20240101-000001");
    append(&pod.live(), b"b1\n");
    let ts2 = pod.rotate("20240101-000002");
    append(&pod.live(), b"c1\n");
    // The file being read is compressed and its original deleted before it was drained.
    gzip(&ts1);
    assert!(!ts1.exists());
    assert_eq!(
        brief(&drain(&mut f)),
        [
            "a2",
            "a3",
            "file:0.log.20240101-000002@0",
            "b1",
            "file:0.log@0",
            "c1"
        ]
    );
    // Later the next one is compressed too: same content, not read again.
    gzip(&ts2);
    append(&pod.live(), b"c2\n");
    assert_eq!(brief(&drain(&mut f)), ["c2"]);
}

#[test]
fn copy_truncate_continues_in_the_copy_then_reads_the_live_file_from_zero() {
    let pod = Pod::new();
    append(&pod.live(), b"a1\na2\n");
    let mut f = pod.follower(None);
    assert_eq!(brief(&poll(&mut f)), ["file:0.log@0", "a1", "a2"]);
    append(&pod.live(), b"a3\npart");
    assert_eq!(brief(&poll(&mut f)), ["a3"]);
    append(&pod.live(), b"ial");
    // copytruncate: the content is copied, then the live file truncated and written again,
    // here past the offset already read, so only its start shows the change.
    fs::copy(pod.live(), pod.path("0.log.20240101-000001")).unwrap();
    truncate(&pod.live());
    append(&pod.live(), b"b1 is a longer line than before\nb2\n");
    let evs = drain(&mut f);
    assert_eq!(
        brief(&evs),
        [
            "partial~",
            "file:0.log@0",
            "b1 is a longer line than before",
            "b2"
        ],
        "{evs:?}"
    );
    assert_eq!(
        evs[0],
        Ev::Line {
            text: "partial".into(),
            offset: 9,
            end: 16,
            truncated: false,
            terminated: false
        }
    );
    assert_eq!(
        evs[1],
        Ev::File {
            name: "0.log".into(),
            fp: fp("b1 is a longer line than before"),
            offset: 0
        }
    );
    append(&pod.live(), b"b3\n");
    assert_eq!(brief(&drain(&mut f)), ["b3"]);
}

#[test]
fn copy_truncate_detected_by_size_and_before_the_first_line_is_complete() {
    let pod = Pod::new();
    append(&pod.live(), b"a1-unfin");
    let mut f = pod.follower(None);
    assert_eq!(poll(&mut f), []);
    append(&pod.live(), b"ished\na2\n");
    fs::copy(pod.live(), pod.path("0.log.20240101-000001")).unwrap();
    truncate(&pod.live());
    append(&pod.live(), b"b1\n");
    assert_eq!(
        brief(&drain(&mut f)),
        // The first line completed in the copy, so that is where the content is announced.
        [
            "file:0.log.20240101-000001@0",
            "a1-unfinished",
            "a2",
            "file:0.log@0",
            "b1"
        ]
    );
}

#[test]
fn copy_truncate_without_a_copy_is_reported_lost() {
    let pod = Pod::new();
    append(&pod.live(), b"a1\na2\n");
    let mut f = pod.follower(None);
    assert_eq!(brief(&poll(&mut f)), ["file:0.log@0", "a1", "a2"]);
    append(&pod.live(), b"a3\n");
    truncate(&pod.live());
    append(&pod.live(), b"b1\n");
    let evs = drain(&mut f);
    assert_eq!(
        brief(&evs),
        [
            format!("lost:0.log:{LOST_TRUNCATED}").as_str(),
            "file:0.log@0",
            "b1"
        ]
    );
    assert!(matches!(evs[0], Ev::Lost { bytes: None, .. }));
}

#[test]
fn resume_from_a_position_in_a_plain_rotated_or_gzipped_file() {
    let pod = Pod::new();
    append(&pod.live(), b"a1\na2\n");
    let mut f = pod.follower(None);
    drain(&mut f);
    let pos = f.position().unwrap();
    assert_eq!(
        pos,
        Position {
            fingerprint: fp("a1"),
            offset: 6
        }
    );
    drop(f);
    append(&pod.live(), b"a3\n");
    let resumed = |pod: &Pod| {
        let mut f = pod.follower(Some(pos));
        assert_eq!(f.position(), Some(pos));
        drain(&mut f)
    };

    // The live file.
    let evs = resumed(&pod);
    assert_eq!(brief(&evs), ["file:0.log@6", "a3"]);
    assert_eq!(
        evs[1],
        Ev::Line {
            text: "a3".into(),
            offset: 6,
            end: 9,
            truncated: false,
            terminated: true
        }
    );

    // Rotated meanwhile: resumed in the rotated file, then the new live file.
    let ts1 = pod.rotate("20240101-000001");
    append(&pod.live(), b"b1\n");
    assert_eq!(
        brief(&resumed(&pod)),
        ["file:0.log.20240101-000001@6", "a3", "file:0.log@0", "b1"]
    );

    // Compressed meanwhile: the offset counts decompressed bytes.
    gzip(&ts1);
    assert_eq!(
        brief(&resumed(&pod)),
        [
            "file:0.log.20240101-000001.gz@6",
            "a3",
            "file:0.log@0",
            "b1"
        ]
    );

    // Deleted meanwhile: reported, and reading starts at the oldest file present.
    fs::remove_file(pod.path("0.log.20240101-000001.gz")).unwrap();
    assert_eq!(
        brief(&resumed(&pod)),
        [
            format!("lost:0.log:{LOST_CHECKPOINT}").as_str(),
            "file:0.log@0",
            "b1"
        ]
    );
}

#[test]
fn pod_directory_deleted_finishes_the_stream_after_draining() {
    let pod = Pod::new();
    append(&pod.live(), b"a1\n");
    let mut f = pod.follower(None);
    assert_eq!(brief(&poll(&mut f)), ["file:0.log@0", "a1"]);
    append(&pod.live(), b"a2\nlast-partial");
    assert!(!f.is_finished());
    fs::remove_dir_all(pod.root.path().join("ns_pod_uid")).unwrap();
    assert_eq!(brief(&poll(&mut f)), ["a2", "last-partial~"]);
    assert!(f.is_finished());
    assert_eq!(f.poll(1 << 20, &mut |_| panic!("finished")).unwrap(), 0);
}

#[test]
fn newer_restart_finishes_the_old_stream_after_draining() {
    let pod = Pod::new();
    append(&pod.live(), b"a1\n");
    let mut f = pod.follower(None);
    assert_eq!(brief(&poll(&mut f)), ["file:0.log@0", "a1"]);
    assert_eq!(poll(&mut f), []);
    assert!(!f.is_finished());
    append(&pod.live(), b"a2\n");
    append(&pod.path("1.log"), b"r1\n");
    assert_eq!(brief(&poll(&mut f)), ["a2"]);
    assert!(f.is_finished());
    // The new restart is a stream of its own.
    let mut g = Follower::new(pod.key(1), None, MAX);
    assert_eq!(brief(&poll(&mut g)), ["file:1.log@0", "r1"]);
    assert!(!g.is_finished());
    // A stream whose live file is gone and that has a newer restart ends too.
    let mut old = Follower::new(pod.key(0), None, MAX);
    fs::remove_file(pod.live()).unwrap();
    assert_eq!(poll(&mut old), []);
    assert!(old.is_finished());
}

#[test]
fn empty_rotated_files_are_skipped() {
    let pod = Pod::new();
    append(&pod.live(), b"");
    pod.rotate("20240101-000001");
    append(&pod.path("0.log.20240101-000002"), b"a1\n");
    append(&pod.live(), b"");
    let mut f = pod.follower(None);
    assert_eq!(brief(&poll(&mut f)), ["file:0.log.20240101-000002@0", "a1"]);
    // The empty live file is followed: it is the one being written.
    assert_eq!(f.current_path(), Some(pod.live().as_path()));
    append(&pod.live(), b"b1\n");
    assert_eq!(brief(&poll(&mut f)), ["file:0.log@0", "b1"]);
}

#[test]
fn file_deleted_before_it_was_read_is_reported_lost() {
    let pod = Pod::new();
    append(&pod.path("0.log.20240101-000001"), b"a1\n");
    append(&pod.path("0.log.20240101-000002"), b"b1\nb2\n");
    append(&pod.live(), b"c1\n");
    let mut f = pod.follower(None);
    // A budget of one byte: the oldest file is open, the others known but not read.
    let mut evs = Vec::new();
    assert_eq!(f.poll(1, &mut |e| evs.push(owned(e))).unwrap(), 1);
    assert_eq!(evs, []);
    fs::remove_file(pod.path("0.log.20240101-000002")).unwrap();
    let evs = drain(&mut f);
    assert_eq!(
        brief(&evs),
        [
            "file:0.log.20240101-000001@0",
            "a1",
            format!("lost:0.log.20240101-000002:{LOST_DELETED}").as_str(),
            "file:0.log@0",
            "c1"
        ]
    );
    assert!(matches!(evs[2], Ev::Lost { bytes: Some(6), .. }));
}

#[test]
fn unreadable_file_is_an_error_naming_it_and_the_follower_recovers() {
    let pod = Pod::new();
    let rotated = pod.path("0.log.20240101-000001");
    append(&pod.live(), b"c1\n");
    // Tests may run as root, which reads anything: a symlink to a directory opens but cannot
    // be read (EISDIR), like an unreadable file. Without privileges, permissions are used too.
    let elsewhere = pod.root.path().join("a-directory");
    fs::create_dir(&elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &rotated).unwrap();
    let mut f = pod.follower(None);
    let err = f
        .poll(1 << 20, &mut |_| panic!("nothing readable before"))
        .unwrap_err();
    assert!(
        err.to_string().contains(&*rotated.to_string_lossy()),
        "{err}"
    );
    fs::remove_file(&rotated).unwrap();

    append(&rotated, b"a1\n");
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&rotated, fs::Permissions::from_mode(0o000)).unwrap();
    if File::open(&rotated).is_err() {
        let err = f
            .poll(1 << 20, &mut |_| panic!("nothing readable before"))
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
        assert!(
            err.to_string().contains(&*rotated.to_string_lossy()),
            "{err}"
        );
    }
    fs::set_permissions(&rotated, fs::Permissions::from_mode(0o644)).unwrap();
    assert_eq!(
        brief(&drain(&mut f)),
        ["file:0.log.20240101-000001@0", "a1", "file:0.log@0", "c1"]
    );
}

#[test]
fn corrupt_gzip_file_is_reported_and_skipped() {
    let pod = Pod::new();
    // Damaged at its start: found unreadable before it is opened.
    let mut bad = gz_bytes(b"x1\n");
    let len = bad.len();
    bad[10..len - 8].fill(0xff);
    fs::write(pod.path("0.log.20240101-000001.gz"), &bad).unwrap();
    // Damaged further in: fails while being read.
    let mut data = Vec::new();
    for i in 0..20_000 {
        writeln!(data, "y{i} {}", "q".repeat(i % 50)).unwrap();
    }
    let mut bad = gz_bytes(&data);
    let mid = bad.len() / 2;
    bad[mid..mid + 64].fill(0xff);
    fs::write(pod.path("0.log.20240101-000002.gz"), &bad).unwrap();
    append(&pod.live(), b"c1\n");
    let mut f = pod.follower(None);
    let mut evs = Vec::new();
    let err = loop {
        match f.poll(1 << 30, &mut |e| evs.push(owned(e))) {
            Ok(0) => panic!("corruption not noticed"),
            Ok(_) => {}
            Err(e) => break e,
        }
    };
    assert!(
        err.to_string().contains("0.log.20240101-000002.gz"),
        "{err}"
    );
    assert_eq!(
        brief(&evs[..2]),
        [
            format!("lost:0.log.20240101-000001.gz:{LOST_CORRUPT}"),
            "file:0.log.20240101-000002.gz@0".to_string()
        ]
    );
    assert_eq!(
        evs.last().map(|e| brief(std::slice::from_ref(e))),
        Some(vec![format!(
            "lost:0.log.20240101-000002.gz:{LOST_CORRUPT}"
        )])
    );
    assert_eq!(brief(&drain(&mut f)), ["file:0.log@0", "c1"]);
}
