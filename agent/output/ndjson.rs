//! One JSON object per line: the format `jq`, Vector, Fluent Bit and Loki all ingest directly.

use std::io::{self, Write};

use crate::record::Exchange;

pub struct NdjsonWriter<W: Write> {
    out: W,
}

impl<W: Write> NdjsonWriter<W> {
    pub fn new(out: W) -> Self {
        NdjsonWriter { out }
    }

    pub fn write(&mut self, exchange: &Exchange) -> io::Result<()> {
        serde_json::to_writer(&mut self.out, exchange)?;
        self.out.write_all(b"\n")
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}
