//! Forensics output: the captured frames as classic pcap files (Ethernet link type, nanosecond
//! timestamps) that Wireshark and `tcpdump -r` open, rotated at a size cap with a cap on the
//! number of files kept, like `tcpdump -C -W`.
//!
//! The file being written is always `PATH`; when it reaches `max_bytes` it becomes `PATH.1`, the
//! previous `PATH.1` becomes `PATH.2`, and so on; files past `max_files` are deleted.

use std::fs::File;
use std::io::{BufWriter, Write as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
use pcap_file::{DataLink, TsResolution};

/// Where and how much.
#[derive(Debug, Clone)]
pub struct Options {
    pub path: PathBuf,
    /// Rotate once the current file holds at least this many bytes.
    pub max_bytes: u64,
    /// Files kept, the current one included.
    pub max_files: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum PcapError {
    #[error("cannot write pcap file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot write pcap file {path}: {source}")]
    Pcap {
        path: String,
        source: pcap_file::PcapError,
    },
    #[error("invalid pcap options: {0}")]
    Invalid(String),
}

pub struct Rotating {
    options: Options,
    writer: Option<PcapWriter<BufWriter<File>>>,
    written: u64,
    /// Files started so far (the first included).
    pub files_started: u64,
}

const HEADER_BYTES: u64 = 24;
const RECORD_HEADER_BYTES: u64 = 16;

fn rotated(path: &Path, n: usize) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

impl Rotating {
    pub fn create(options: Options) -> Result<Rotating, PcapError> {
        if options.max_files == 0 {
            return Err(PcapError::Invalid(
                "the number of pcap files must be at least 1".into(),
            ));
        }
        if options.max_bytes <= HEADER_BYTES {
            return Err(PcapError::Invalid(format!(
                "the pcap size cap must be larger than {HEADER_BYTES} bytes"
            )));
        }
        let writer = Self::open(&options.path)?;
        Ok(Rotating {
            options,
            writer: Some(writer),
            written: HEADER_BYTES,
            files_started: 1,
        })
    }

    fn open(path: &Path) -> Result<PcapWriter<BufWriter<File>>, PcapError> {
        let file = File::create(path).map_err(|source| PcapError::Io {
            path: path.display().to_string(),
            source,
        })?;
        let header = PcapHeader {
            datalink: DataLink::ETHERNET,
            snaplen: super::bpf::SNAPLEN,
            ts_resolution: TsResolution::NanoSecond,
            ..PcapHeader::default()
        };
        PcapWriter::with_header(BufWriter::with_capacity(1 << 16, file), header).map_err(|source| {
            PcapError::Pcap {
                path: path.display().to_string(),
                source,
            }
        })
    }

    /// Appends one frame (`orig_len`: its length on the wire).
    pub fn write(&mut self, ts_ns: i64, data: &[u8], orig_len: usize) -> Result<(), PcapError> {
        let size = RECORD_HEADER_BYTES + data.len() as u64;
        if self.written > HEADER_BYTES && self.written + size > self.options.max_bytes {
            self.rotate()?;
        }
        let ts = Duration::from_nanos(ts_ns.max(0) as u64);
        let packet = PcapPacket::new(ts, orig_len as u32, data);
        let Some(writer) = self.writer.as_mut() else {
            return Ok(()); // closed after a failed rotation: reported then
        };
        writer
            .write_packet(&packet)
            .map_err(|source| PcapError::Pcap {
                path: self.options.path.display().to_string(),
                source,
            })?;
        self.written += size;
        Ok(())
    }

    fn rotate(&mut self) -> Result<(), PcapError> {
        self.close()?;
        let io = |path: &Path, source| PcapError::Io {
            path: path.display().to_string(),
            source,
        };
        let path = self.options.path.clone();
        let keep = self.options.max_files;
        // Shift PATH.(k) to PATH.(k+1), dropping what falls past the cap.
        for k in (1..keep.max(1)).rev() {
            let from = rotated(&path, k);
            if !from.exists() {
                continue;
            }
            if k + 1 >= keep {
                std::fs::remove_file(&from).map_err(|e| io(&from, e))?;
            } else {
                std::fs::rename(&from, rotated(&path, k + 1)).map_err(|e| io(&from, e))?;
            }
        }
        if keep > 1 {
            std::fs::rename(&path, rotated(&path, 1)).map_err(|e| io(&path, e))?;
        }
        self.writer = Some(Self::open(&path)?);
        self.written = HEADER_BYTES;
        self.files_started += 1;
        Ok(())
    }

    /// Writes out what is buffered and closes the file.
    pub fn finish(mut self) -> Result<(), PcapError> {
        self.close()
    }

    fn close(&mut self) -> Result<(), PcapError> {
        match self.writer.take() {
            Some(writer) => writer
                .into_writer()
                .flush()
                .map_err(|source| PcapError::Io {
                    path: self.options.path.display().to_string(),
                    source,
                }),
            None => Ok(()),
        }
    }
}

impl Drop for Rotating {
    fn drop(&mut self) {
        if let Err(e) = self.close() {
            tracing::warn!(error = %e, "Could not finish the pcap file.");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(path: &Path) -> Vec<(Duration, Vec<u8>)> {
        let mut reader = pcap_file::pcap::PcapReader::new(File::open(path).unwrap()).unwrap();
        assert_eq!(reader.header().datalink, DataLink::ETHERNET);
        let mut out = Vec::new();
        while let Some(p) = reader.next_packet() {
            let p = p.unwrap();
            out.push((p.timestamp, p.data.into_owned()));
        }
        out
    }

    #[test]
    fn frames_round_trip_and_files_rotate_at_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cap.pcap");
        let mut w = Rotating::create(Options {
            path: path.clone(),
            max_bytes: 24 + 3 * (16 + 100),
            max_files: 3,
        })
        .unwrap();
        for i in 0..10u8 {
            w.write(1_000_000_000 + i as i64, &[i; 100], 100).unwrap();
        }
        let started = w.files_started;
        w.finish().unwrap();
        assert_eq!(started, 4, "3 frames per file");
        // Newest 3 files kept: frames 9 | 6,7,8 | 3,4,5; frames 0..3 rotated away.
        let current = read_all(&path);
        assert_eq!(current, vec![(Duration::new(1, 9), vec![9; 100])]);
        let one: Vec<u8> = read_all(&rotated(&path, 1))
            .iter()
            .map(|p| p.1[0])
            .collect();
        let two: Vec<u8> = read_all(&rotated(&path, 2))
            .iter()
            .map(|p| p.1[0])
            .collect();
        assert_eq!((one, two), (vec![6, 7, 8], vec![3, 4, 5]));
        assert!(!rotated(&path, 3).exists());
        for f in [path.clone(), rotated(&path, 1)] {
            assert!(std::fs::metadata(&f).unwrap().len() <= 24 + 3 * 116);
        }
        // tcpdump reads them too, when installed.
        if let Ok(out) = std::process::Command::new("tcpdump")
            .args(["-nn", "-r"])
            .arg(rotated(&path, 1))
            .output()
        {
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    #[test]
    fn bad_options_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.pcap");
        for (max_bytes, max_files) in [(1000, 0), (10, 1)] {
            assert!(Rotating::create(Options {
                path: path.clone(),
                max_bytes,
                max_files
            })
            .is_err());
        }
        let e = Rotating::create(Options {
            path: dir.path().join("no/such/dir/x.pcap"),
            max_bytes: 1000,
            max_files: 1,
        })
        .err()
        .unwrap();
        assert!(e.to_string().contains("no/such/dir"), "{e}");
    }
}
