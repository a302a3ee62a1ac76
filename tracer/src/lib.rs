//! faultline: an eBPF tracer of mmap_lock, page-fault and userfaultfd deadlocks.
//!
//! Layers (docs/design.md): the pure core is its own crate, `faultline-core` (events, lock
//! model, waits-for graph, detectors, engine, trace format, views), re-exported here under its
//! module names; `kernel` holds the kernel adapters, `sinks` the outputs, `commands` the thin
//! commands over them, and `config` the agent's config file.

pub mod commands;
pub mod config;
pub mod kernel;
pub mod sinks;

pub use faultline_core::{detect, engine, event, graph, model, trace, views};
// The adapters under their own names too, so a path names the module, not its layer.
pub use commands::{agent, diagnose, record, replay, single};
pub use kernel::{check, decode, live, pidcache, probes, scope, stats, stream, workload};
pub use sinks::{alerts, http, metrics, report};
