//! Kernel adapters:
//! - `probes`: the plan (detail mode × kernel features), then one load and one attach; one
//!   module per probe family in `probes::families` (`exit`, `mmap_lock`, `contention` and
//!   its `lock_profile`, `faults`, `uffd`, `diag`), mirroring `tracer-ebpf`'s;
//! - `decode`: ring-buffer records into core events (each family decodes its own);
//! - `stream`: the ring-buffer stream; `stats`: kernel aggregates;
//! - `reclaim`: per-task entries that outlive their task;
//! - `live`: the live feed that reconciles streamed records and snapshots of the per-task map
//!   into the engine;
//! - `check`: what this kernel offers; `features`: the kernel features found in BTF;
//!   `privileges`: the features that depend on the agent's privileges, tried at start;
//! - host facts about processes: `procfs`, their cgroup and workload (`cgroup_ids`,
//!   `workload`, cached by `pidcache`; pod names from the kubelet's log directories in `pods`),
//!   and whether they are in the agent's scope (`scope`);
//! - `lock_names`: the lock-contention profile's locks, frames and tasks named;
//! - `peer`: who answers on the agent's Unix socket (peer credentials, executable);
//! - `stop_requests`: SIGTERM and SIGINT counted by a handler of our own.

pub mod cgroup_ids;
pub mod check;
pub mod decode;
pub mod features;
pub mod live;
pub mod lock_names;
pub mod peer;
pub mod pidcache;
pub mod pods;
pub mod privileges;
pub mod probes;
pub mod procfs;
pub mod reclaim;
pub mod scope;
pub mod stats;
pub mod stop_requests;
pub mod stream;
pub mod user_locks;
pub mod user_mem;
pub mod user_stacks;
pub mod user_symbols;
pub mod workload;
