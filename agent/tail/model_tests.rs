//! A randomized model of a container runtime and kubelet writing, rotating, compressing and
//! copy-truncating a stream while the follower polls (and sometimes restarts from its
//! checkpoint): the lines handed out, concatenated, must be exactly what was written.

use super::*;
use std::fs::OpenOptions;
use std::io::Write;

use flate2::write::GzEncoder;
use flate2::Compression;

/// xorshift64: deterministic, good enough to pick operations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn upto(&mut self, n: usize) -> usize {
        self.below(n as u64) as usize
    }
}

/// Every line ends with a unique `E<seq>` so that the rest of a line split by a rotation is as
/// unique a first line as a whole one (fingerprints name contents by their first line).
const SUFFIX: usize = 10; // "E00000000\n"

struct Writer {
    dir: PathBuf,
    rng: Rng,
    /// Everything written, in stream order.
    written: Vec<u8>,
    seq: u64,
    /// The line being written and how much of it is.
    line: Vec<u8>,
    line_at: usize,
    live_exists: bool,
    /// Set between a rename and the runtime's reopen: it still writes to the renamed file.
    lagging: Option<PathBuf>,
    live_len: usize,
    live_has_newline: bool,
    ts: u32,
    /// Uncompressed rotated files (renamed or copies), oldest first.
    rotated: Vec<PathBuf>,
    log: Vec<String>,
}

impl Writer {
    fn live(&self) -> PathBuf {
        self.dir.join("0.log")
    }

    fn next_rotated(&mut self) -> PathBuf {
        self.ts += 1;
        self.dir.join(format!("0.log.20240101-{:06}", self.ts))
    }

    fn new_line(&mut self) {
        self.seq += 1;
        let len = if self.rng.below(20) == 0 {
            1000 + self.rng.upto(3000)
        } else {
            self.rng.upto(120)
        };
        self.line.clear();
        write!(self.line, "L{:08} ", self.seq).unwrap();
        for _ in 0..len {
            self.line.push(b'a' + self.rng.below(26) as u8);
        }
        writeln!(self.line, " E{:08}", self.seq).unwrap();
        self.line_at = 0;
    }

    /// Writes `n` more bytes of the stream, through whole and partial lines.
    fn append(&mut self, mut n: usize) {
        let target = self.lagging.clone().unwrap_or_else(|| self.live());
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(target)
            .unwrap();
        self.live_exists |= self.lagging.is_none();
        while n > 0 {
            if self.line_at == self.line.len() {
                self.new_line();
            }
            let k = n.min(self.line.len() - self.line_at);
            let piece = &self.line[self.line_at..self.line_at + k];
            f.write_all(piece).unwrap();
            self.written.extend_from_slice(piece);
            self.live_has_newline |= piece.contains(&b'\n');
            self.live_len += k;
            self.line_at += k;
            n -= k;
        }
        self.log.push(format!("append {}", self.live_len));
    }

    /// Rotations keep every file's first line unique: the live file is empty, or holds a
    /// complete line and the line in progress (if any) has its unique end still to come.
    fn may_rotate(&self) -> bool {
        self.live_exists && (self.live_len == 0 || (self.live_has_newline && self.may_split()))
    }

    /// The line in progress (if any) still has its unique end to come.
    fn may_split(&self) -> bool {
        self.line_at == self.line.len() || self.line.len() - self.line_at >= SUFFIX
    }

    fn reset_live(&mut self, exists: bool) {
        self.live_exists = exists;
        self.live_len = 0;
        self.live_has_newline = false;
    }

    fn rotate(&mut self) {
        if !self.may_rotate() {
            return;
        }
        let to = self.next_rotated();
        fs::rename(self.live(), &to).unwrap();
        self.log.push(format!("rename -> {}", to.display()));
        self.rotated.push(to);
        // The runtime reopens at once, when it writes next, or after writing some more to the
        // renamed file.
        match self.rng.below(3) {
            0 => {
                File::create(self.live()).unwrap();
                self.reset_live(true);
            }
            1 => self.reset_live(false),
            _ => {
                self.lagging = self.rotated.last().cloned();
                self.live_exists = false;
            }
        }
    }

    fn reopen(&mut self) {
        if self.lagging.is_some() && self.may_split() {
            self.lagging = None;
            File::create(self.live()).unwrap();
            self.reset_live(true);
            self.log.push("reopen".into());
        }
    }

    fn copy_truncate(&mut self) {
        if !self.may_rotate() {
            return;
        }
        let to = self.next_rotated();
        fs::copy(self.live(), &to).unwrap();
        OpenOptions::new()
            .write(true)
            .open(self.live())
            .unwrap()
            .set_len(0)
            .unwrap();
        self.log.push(format!("copy-truncate -> {}", to.display()));
        self.rotated.push(to);
        self.reset_live(true);
    }

    /// Kubelet compresses every rotated file but the newest.
    fn gzip_older(&mut self) {
        let keep = self.rotated.pop();
        for path in self.rotated.drain(..) {
            let data = fs::read(&path).unwrap();
            let mut enc = GzEncoder::new(Vec::new(), Compression::fast());
            enc.write_all(&data).unwrap();
            let tmp = PathBuf::from(format!("{}.tmp", path.display()));
            fs::write(&tmp, enc.finish().unwrap()).unwrap();
            fs::rename(&tmp, format!("{}.gz", path.display())).unwrap();
            fs::remove_file(&path).unwrap();
            self.log.push(format!("gzip {}", path.display()));
        }
        self.rotated.extend(keep);
    }

    /// Finishes the line in progress, so that everything written is complete.
    fn finish_line(&mut self) {
        if self.line_at < self.line.len() {
            let rest = self.line.len() - self.line_at;
            self.append(rest);
        }
    }
}

/// What the follower handed out, checked as it comes.
#[derive(Default)]
struct Reader {
    got: Vec<u8>,
    /// Offset the next line of the current file must start at.
    next_offset: Option<u64>,
    /// The files announced, for the failure message.
    log: Vec<String>,
}

impl Reader {
    fn poll(&mut self, f: &mut Follower, budget: usize) -> usize {
        f.poll(budget, &mut |e| match e {
            TailEvent::File { offset, path, .. } => {
                self.log.push(format!(
                    "  file {} @{offset} (read so far {})",
                    path.display(),
                    self.got.len()
                ));
                self.next_offset = Some(offset)
            }
            TailEvent::Line(l) => {
                assert_eq!(
                    Some(l.offset),
                    self.next_offset,
                    "line offsets not contiguous"
                );
                assert!(!l.truncated);
                self.next_offset = Some(l.end);
                self.got.extend_from_slice(l.bytes);
                if l.terminated {
                    self.got.push(b'\n');
                }
            }
            TailEvent::Lost { path, reason, .. } => {
                panic!("lost {}: {reason}", path.display())
            }
        })
        .unwrap()
    }
}

fn run(seed: u64, ops: usize) {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("ns_pod_uid/istio-proxy");
    fs::create_dir_all(&dir).unwrap();
    let key = StreamKey {
        dir: dir.clone(),
        restart: 0,
    };
    let mut w = Writer {
        dir,
        rng: Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1),
        written: Vec::new(),
        seq: 0,
        line: Vec::new(),
        line_at: 0,
        live_exists: false,
        lagging: None,
        live_len: 0,
        live_has_newline: false,
        ts: 0,
        rotated: Vec::new(),
        log: Vec::new(),
    };
    let max = 1 << 20;
    let mut f = Follower::new(key.clone(), None, max);
    let mut r = Reader::default();
    let check = |w: &Writer, r: &Reader, at: &str| {
        if !w.written.starts_with(&r.got) {
            let diff = r
                .got
                .iter()
                .zip(&w.written)
                .take_while(|(a, b)| a == b)
                .count();
            let from = diff.saturating_sub(60);
            panic!(
                "seed {seed} {at}: output differs at byte {diff}\n got: {:?}\nwant: {:?}\nops:\n{}",
                String::from_utf8_lossy(&r.got[from..(diff + 60).min(r.got.len())]),
                String::from_utf8_lossy(&w.written[from..(diff + 60).min(w.written.len())]),
                w.log.join("\n")
            );
        }
    };
    for _ in 0..ops {
        match w.rng.below(100) {
            0..=39 => {
                let n = if w.rng.below(4) == 0 {
                    1 + w.rng.upto(8)
                } else {
                    1 + w.rng.upto(600)
                };
                w.append(n);
            }
            40..=49 => w.rotate(),
            50..=56 => w.gzip_older(),
            57..=63 => w.copy_truncate(),
            64..=67 => w.reopen(),
            68..=70 => {
                w.log.push(format!("restart at {:?}", f.position()));
                f = Follower::new(key.clone(), f.position(), max);
            }
            _ => {
                let budget = if w.rng.below(3) == 0 {
                    1 + w.rng.upto(100)
                } else {
                    1 + w.rng.upto(300_000)
                };
                r.poll(&mut f, budget);
                w.log.push(format!("poll {budget}"));
                w.log.append(&mut r.log);
                check(&w, &r, "poll");
            }
        }
    }
    w.finish_line();
    while r.poll(&mut f, 1 << 20) > 0 {}
    w.log.append(&mut r.log);
    check(&w, &r, "end");
    if r.got.len() != w.written.len() {
        panic!(
            "seed {seed}: read {} of {} bytes\nops:\n{}",
            r.got.len(),
            w.written.len(),
            w.log.join("\n")
        );
    }
    assert!(!f.is_finished());
}

#[test]
fn random_writes_rotations_and_polls_lose_and_duplicate_nothing() {
    // For a longer soak: MODEL_SEEDS=3000 MODEL_OPS=1000; to replay one: MODEL_SEED=n.
    let var =
        |name: &str, default: u64| std::env::var(name).map_or(default, |v| v.parse().unwrap());
    let ops = var("MODEL_OPS", 150) as usize;
    if let Ok(seed) = std::env::var("MODEL_SEED") {
        return run(seed.parse().unwrap(), ops);
    }
    for seed in 1..=var("MODEL_SEEDS", 200) {
        run(seed, ops);
    }
}
