//! faultline: an eBPF tracer of mmap_lock, page-fault and userfaultfd deadlocks.
//!
//! Layers: `probes` (kernel I/O) and `decode` turn kernel records into `event::Event`s; `trace`
//! reads and writes them as JSON Lines; `agent`, `record` and `check` are the commands.

pub mod agent;
pub mod check;
pub mod decode;
pub mod event;
pub mod probes;
pub mod record;
pub mod stats;
pub mod stream;
pub mod trace;
