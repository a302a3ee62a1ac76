//! faultline's core: pure and deterministic. Events in (`event`, read and written as JSON Lines
//! by `trace`), a lock model (`model`: who holds and waits for which `mmap_lock`, kernel lock or
//! userfaultfd), the waits-for graph built from it (`graph`), the detectors (`detect`) and the
//! engine that runs them (`engine`), serialisable views for the sinks (`views`), workload
//! classification of cgroup paths (`workload`), and the analysis behind `faultline diagnose`
//! (`diagnosis`: a gathered snapshot of a hung host in, chains and cycles out).
//!
//! Time comes only from the events, so replaying a recording reproduces a live run. Nothing here
//! knows of BPF, files, /proc, HTTP or an async runtime: the crate's dependencies say so.

pub mod detect;
pub mod diagnosis;
pub mod engine;
pub mod event;
pub mod exposure;
pub mod graph;
pub mod kallsyms;
pub mod lock_profile;
pub mod model;
pub mod trace;
pub mod user_lock;
pub mod user_profile;
pub mod views;
pub mod workload;
