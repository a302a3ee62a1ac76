//! Kernel adapters: loading and attaching the probes with feature discovery (`probes`),
//! decoding ring-buffer records into core events (`decode`), the ring-buffer stream (`stream`),
//! kernel aggregates (`stats`), the reclaiming of per-task entries that outlive their task
//! (`reclaim`), the live feed that reconciles streamed records and snapshots of
//! the per-task map into the engine (`live`), what this kernel offers (`check`), and host facts
//! about processes: their cgroup and workload (`workload`, cached by `pidcache`), and whether
//! they are in the agent's scope (`scope`).

pub mod cgroup_ids;
pub mod check;
pub mod decode;
pub mod features;
pub mod live;
pub mod pidcache;
pub mod probes;
pub mod procfs;
pub mod reclaim;
pub mod scope;
pub mod stats;
pub mod stream;
pub mod workload;
