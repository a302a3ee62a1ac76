//! The commands: thin wiring of the layers. `agent` (live graph, alerts, API), `record` (every
//! event into a trace file), `replay` (a trace through the detectors), `diagnose` (a one-shot
//! look at an already-hung host), `contention` (a one-shot kernel lock-contention profile),
//! and `single` (one agent per host). `check` is
//! `kernel::check`.

pub mod agent;
pub mod contention;
pub mod diagnose;
pub mod record;
pub mod replay;
pub mod single;
