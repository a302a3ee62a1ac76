//! `agent --record FILE`: every event the agent's engine applied, in the order it applied them
//! (the kernel's records, the snapshots' corrections, the losses and their confirmations), as a
//! trace. `faultline replay FILE` then decides what the agent decided: the same alerts, held
//! and dropped the same way after a loss. A `faultline record` trace is different: it has every
//! acquisition (full detail) and no snapshot, so it replays what the kernel did, not what a
//! default-mode agent concluded.

use std::path::Path;

use anyhow::{Context as _, Result};

use crate::{
    core::event::{Event, EventKind},
    kernel::live::{monotonic_ns, LiveFeed},
    sinks::trace_file::TraceFile,
};

pub struct Journal {
    /// `None` after a write error: the agent goes on without recording.
    file: Option<TraceFile>,
}

impl Journal {
    pub fn create(path: &Path) -> Result<Self> {
        let mut file = TraceFile::create(path)
            .with_context(|| format!("cannot create {} (--record)", path.display()))?;
        // Says that the order is the agent's, not the kernel's (see `EventKind::Journal`).
        let opening = Event {
            ts_ns: monotonic_ns(),
            tid: 0,
            pid: 0,
            comm: None,
            kind: EventKind::Journal {},
        };
        file.push(&opening)?;
        Ok(Self { file: Some(file) })
    }

    /// Moves what the feed applied since the last call into the file's buffer.
    pub fn take_from(&mut self, feed: &mut LiveFeed) {
        let events = feed.take_journal();
        let Some(file) = self.file.as_mut() else {
            return;
        };
        for ev in &events {
            if let Err(e) = file.push(ev) {
                self.stop(e);
                return;
            }
        }
    }

    /// Writes the buffer out: at each snapshot, and at exit.
    pub fn flush(&mut self) {
        if let Some(Err(e)) = self.file.as_mut().map(TraceFile::flush) {
            self.stop(e);
        }
    }

    fn stop(&mut self, e: crate::sinks::trace_file::WriteError) {
        // Monitoring matters more than the recording: the agent goes on.
        log::error!("{e}; the agent goes on without --record");
        self.file = None;
    }
}
