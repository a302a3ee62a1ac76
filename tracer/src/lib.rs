//! faultline: an eBPF tracer of mmap_lock, page-fault and userfaultfd deadlocks.
//!
//! Layers: `probes` (kernel I/O) and `decode` turn kernel records into `event::Event`s; `trace`
//! reads and writes them as JSON Lines; `model`, `graph`, `detect` and `engine` are the pure
//! core (lock model, waits-for graph, detectors); `agent`, `record`, `replay` and `check` are the
//! commands.

pub mod agent;
pub mod alerts;
pub mod check;
pub mod config;
pub mod decode;
pub mod detect;
pub mod diagnose;
pub mod engine;
pub mod event;
pub mod graph;
pub mod http;
pub mod live;
pub mod metrics;
pub mod model;
pub mod probes;
pub mod record;
pub mod replay;
pub mod single;
pub mod stats;
pub mod stream;
pub mod trace;
pub mod views;
