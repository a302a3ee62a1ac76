//! Kernel adapters: loading and attaching the probes with feature discovery (`probes`),
//! decoding ring-buffer records into core events (`decode`), the ring-buffer stream (`stream`),
//! kernel aggregates (`stats`), the live feed that reconciles streamed records and snapshots of
//! the per-task map into the engine (`live`), and what this kernel offers (`check`).

pub mod check;
pub mod decode;
pub mod live;
pub mod probes;
pub mod stats;
pub mod stream;
