//! Trace files: JSON Lines of trace format v1, read and written.

use std::io::{self, BufRead, Write};

use crate::event::Event;

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("line {line}: {message}")]
    Malformed { line: usize, message: String },
    #[error("line {line}: read failed: {source}")]
    Io {
        line: usize,
        #[source]
        source: io::Error,
    },
}

/// Reads events one line at a time; blank lines are skipped. Errors name the 1-based line.
pub struct TraceReader<R> {
    input: R,
    line: usize,
    buf: String,
}

impl<R: BufRead> TraceReader<R> {
    pub fn new(input: R) -> Self {
        Self {
            input,
            line: 0,
            buf: String::new(),
        }
    }

    /// Number of the last line read.
    pub fn line(&self) -> usize {
        self.line
    }
}

impl<R: BufRead> Iterator for TraceReader<R> {
    type Item = Result<Event, TraceError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            self.buf.clear();
            self.line += 1;
            match self.input.read_line(&mut self.buf) {
                Ok(0) => return None,
                Ok(_) => {}
                Err(source) => {
                    return Some(Err(TraceError::Io {
                        line: self.line,
                        source,
                    }))
                }
            }
            let text = self.buf.trim();
            if text.is_empty() {
                continue;
            }
            return Some(
                serde_json::from_str(text).map_err(|e| TraceError::Malformed {
                    line: self.line,
                    message: e.to_string(),
                }),
            );
        }
    }
}

/// Writes one event per line.
pub struct TraceWriter<W: Write> {
    out: W,
    written: u64,
}

impl<W: Write> TraceWriter<W> {
    pub fn new(out: W) -> Self {
        Self { out, written: 0 }
    }

    pub fn write(&mut self, event: &Event) -> io::Result<()> {
        serde_json::to_writer(&mut self.out, event)?;
        self.out.write_all(b"\n")?;
        self.written += 1;
        Ok(())
    }

    pub fn written(&self) -> u64 {
        self.written
    }

    pub fn finish(mut self) -> io::Result<W> {
        self.out.flush()?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Addr, EventKind, LockMode};

    #[test]
    fn a_written_trace_reads_back_identically() {
        let events: Vec<Event> = (0..3)
            .map(|i| Event {
                ts_ns: i,
                tid: 7,
                pid: 7,
                comm: None,
                kind: EventKind::MmapLockRelease {
                    mm: Addr(0x1000),
                    mode: LockMode::Read,
                    mm_pid: None,
                },
            })
            .collect();
        let mut w = TraceWriter::new(Vec::new());
        for e in &events {
            w.write(e).expect("write");
        }
        let bytes = w.finish().expect("flush");
        let back: Vec<Event> = TraceReader::new(&bytes[..])
            .collect::<Result<_, _>>()
            .expect("read");
        assert_eq!(back, events);
    }

    #[test]
    fn malformed_and_unknown_kinds_name_their_line() {
        let input = "\n{\"ts_ns\":1,\"tid\":1,\"pid\":1,\"kind\":\"task_exit\"}\n{\"ts_ns\":2,\"tid\":1,\"pid\":1,\"kind\":\"teleport\"}\nnot json\n";
        let results: Vec<_> = TraceReader::new(input.as_bytes()).collect();
        assert!(results[0].is_ok());
        let unknown = results[1].as_ref().expect_err("unknown kind");
        assert!(
            unknown.to_string().starts_with("line 3:") && unknown.to_string().contains("teleport"),
            "{unknown}"
        );
        let garbage = results[2].as_ref().expect_err("not json");
        assert!(garbage.to_string().starts_with("line 4:"), "{garbage}");
    }
}
