//! The trace file of a recording: events buffered as whole lines and written out at least once a
//! second, so that whatever stops the recorder (SIGKILL, a full disk) leaves a file that ends on
//! a complete line and holds everything up to about a second before.

use std::{
    fs::{File, Permissions},
    io::{self, Write as _},
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use crate::core::{event::Event, trace::TraceWriter};

/// Buffered bytes past which the buffer is written out before its time: bounds the memory a burst
/// takes and what a SIGKILL can lose.
const FLUSH_BYTES: usize = 1 << 20;

/// rw------- : what a trace file is created with.
const OWNER_ONLY: u32 = 0o600;

/// Why the recording could not go on. One line: the file, the problem, what the file still holds.
#[derive(Debug, thiserror::Error)]
#[error("cannot write {path}: {cause}; recording stopped, the file keeps the {kept} events before the error{restore}", path = path.display(), restore = restore_note(.restore))]
pub struct WriteError {
    pub path: PathBuf,
    /// Not `source`: the message says it already, and a chained source would say it twice.
    pub cause: io::Error,
    /// Events the file holds, each on a complete line.
    pub kept: u64,
    /// Why cutting the partly written last line off failed, when it did.
    pub restore: Option<io::Error>,
}

fn restore_note(restore: &Option<io::Error>) -> String {
    match restore {
        Some(e) => format!(" (but its last line may be cut: truncating it failed: {e})"),
        None => String::new(),
    }
}

pub struct TraceFile {
    path: PathBuf,
    file: File,
    lines: TraceWriter<Vec<u8>>,
    /// Bytes of the file that end on a complete line.
    committed: u64,
    /// Events in `committed`, and in the buffer.
    committed_events: u64,
    pending_events: u64,
    /// The latest `ts_ns` written or buffered.
    latest_ts_ns: Option<u64>,
    /// Set by the first write error: nothing is written after it.
    failed: bool,
}

impl TraceFile {
    /// Creates (or truncates) `path`, readable by its owner only: a trace keeps raw kernel and
    /// user addresses, pids, comms and cgroups (docs/security.md).
    pub fn create(path: &Path) -> io::Result<Self> {
        let file = File::options()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(OWNER_ONLY)
            .open(path)?;
        // The mode above applies only to a file it creates; an existing one keeps its own. Only
        // a regular file is narrowed (a trace sent to /dev/stdout must not chmod the terminal).
        let meta = file.metadata()?;
        if meta.is_file() && meta.permissions().mode() & 0o077 != 0 {
            file.set_permissions(Permissions::from_mode(OWNER_ONLY))?;
        }
        Ok(Self::new(path, file))
    }

    fn new(path: &Path, file: File) -> Self {
        Self {
            path: path.to_owned(),
            file,
            lines: TraceWriter::new(Vec::with_capacity(FLUSH_BYTES)),
            committed: 0,
            committed_events: 0,
            pending_events: 0,
            latest_ts_ns: None,
            failed: false,
        }
    }

    /// Buffers one event; writes the buffer out when it is full.
    pub fn push(&mut self, event: &Event) -> Result<(), WriteError> {
        if self.failed {
            return Ok(());
        }
        // Serializing into memory cannot fail for our own events; if it ever did, the line would
        // be missing, not cut.
        if let Err(e) = self.lines.write(event) {
            log::warn!("skipping an event that does not serialize: {e}");
            return Ok(());
        }
        self.pending_events += 1;
        self.latest_ts_ns = Some(self.latest_ts_ns.unwrap_or(0).max(event.ts_ns));
        if self.lines.get_mut().len() >= FLUSH_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes out every buffered line. On an error the file is cut back to its last complete
    /// line and nothing more is written.
    pub fn flush(&mut self) -> Result<(), WriteError> {
        if self.failed {
            return Ok(());
        }
        let buf = self.lines.get_mut();
        let mut done = 0;
        let error = loop {
            if done == buf.len() {
                break None;
            }
            match self.file.write(&buf[done..]) {
                Ok(0) => break Some(io::Error::from(io::ErrorKind::WriteZero)),
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Some(e),
            }
        };
        let Some(cause) = error else {
            self.committed += buf.len() as u64;
            self.committed_events += self.pending_events;
            self.pending_events = 0;
            buf.clear();
            return Ok(());
        };
        // Keep the whole lines that made it; cut the one the error stopped in the middle of.
        self.failed = true;
        let keep = buf[..done]
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        self.committed += keep as u64;
        self.committed_events += buf[..keep].iter().filter(|&&b| b == b'\n').count() as u64;
        let restore = if keep == done {
            None
        } else {
            self.file.set_len(self.committed).err()
        };
        Err(WriteError {
            path: self.path.clone(),
            cause,
            kept: self.committed_events,
            restore,
        })
    }

    /// The latest event time so far: where a marker written now belongs in time.
    pub fn latest_ts_ns(&self) -> Option<u64> {
        self.latest_ts_ns
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::event::EventKind;

    fn exit(ts_ns: u64) -> Event {
        Event {
            ts_ns,
            tid: 1,
            pid: 1,
            comm: Some("x".repeat(100)),
            kind: EventKind::TaskExit {},
        }
    }

    /// `/dev/full` refuses every write with ENOSPC, the way a full disk does.
    #[test]
    fn a_trace_file_is_readable_by_its_owner_only_even_when_it_existed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fresh = dir.path().join("fresh.jsonl");
        let old = dir.path().join("old.jsonl");
        std::fs::write(&old, "old\n").expect("old file");
        std::fs::set_permissions(&old, Permissions::from_mode(0o644)).expect("chmod");
        for path in [&fresh, &old] {
            drop(TraceFile::create(path).expect("create"));
            let mode = std::fs::metadata(path).expect("stat").permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}: {mode:o}", path.display());
        }
        assert_eq!(std::fs::read(&old).expect("read").len(), 0, "truncated");
    }

    #[test]
    fn a_write_error_names_the_file_and_what_it_keeps() {
        let full = File::options()
            .write(true)
            .open("/dev/full")
            .expect("/dev/full");
        let mut f = TraceFile::new(Path::new("/dev/full"), full);
        f.push(&exit(1)).expect("buffered, not written yet");
        let err = f.flush().expect_err("ENOSPC");
        let text = err.to_string();
        assert!(
            text.starts_with("cannot write /dev/full: No space left on device")
                && text.contains("keeps the 0 events"),
            "{text}"
        );
        assert!(!text.contains('\n'), "one line: {text}");
        // Nothing more is written after the error.
        f.push(&exit(2)).expect("ignored");
        assert!(f.flush().is_ok());
    }
}
