//! faultline: an eBPF tracer of mmap_lock, page-fault and userfaultfd deadlocks.
//!
//! Layers (docs/design.md), each a folder, depending downwards only: the pure core is its own
//! crate, `faultline-core` (events, lock model, waits-for graph, detectors, engine, trace format,
//! views, diagnose's analysis), here as `core`; `kernel` holds the kernel and /proc adapters,
//! `sinks` the outputs, `commands` the thin commands over them, and `config` the agent's config
//! file. `tests/layers.rs` checks the direction.

pub mod commands;
pub mod config;
pub mod kernel;
pub mod sinks;

/// The core, under one name: a path into it says it is the core (`core::model`), as a path into
/// an adapter says its layer (`kernel::probes`, `sinks::http`, `commands::diagnose`).
pub use faultline_core as core;
