//! What the agent itself saw, for its metrics: records received and undecodable, and slow
//! waits by process and by workload (cumulative for the life of the agent).

use std::{collections::HashMap, hash::Hash, sync::Arc};

use crate::{
    core::workload::Attribution,
    kernel::{cgroup_ids, decode::Decoded, workload},
    sinks::metrics::ProcessKey,
};

/// Process names counted for slow waits; past this many distinct names, new ones count as
/// "other" (label cardinality stays bounded whatever the host runs).
const MAX_NAMES: usize = 4096;

#[derive(Default)]
pub struct Telemetry {
    pub events_received: u64,
    pub decode_errors: u64,
    /// Only ever grow: a key once counted keeps its count (see `metrics::fold`).
    pub slow_waits_by_process: HashMap<ProcessKey, u64>,
    pub slow_waits_by_workload: HashMap<String, u64>,
}

/// Counts one more under `name`, or under `other` once `MAX_NAMES` names are known.
fn count_bounded<K: Eq + Hash>(map: &mut HashMap<K, u64>, name: K, other: K) {
    let key = if map.len() < MAX_NAMES || map.contains_key(&name) {
        name
    } else {
        other
    };
    *map.entry(key).or_default() += 1;
}

impl Telemetry {
    pub fn on_record(&mut self, d: &Decoded) {
        self.events_received += 1;
        if d.reasons.slow_wait() {
            let name = d.event.comm.clone().unwrap_or_else(|| "?".into());
            // The record's own cgroup first: right even once the process is gone.
            let attribution = d
                .cgroup_id
                .and_then(cgroup_ids::attribute)
                .or_else(|| workload::attribute(d.event.pid));
            self.count_slow_wait(name, attribution);
        }
    }

    /// One slow wait of process `name`, running where `attribution` says.
    pub fn count_slow_wait(&mut self, name: String, attribution: Option<Arc<Attribution>>) {
        count_bounded(
            &mut self.slow_waits_by_process,
            ProcessKey::new(name, attribution.as_deref()),
            ProcessKey::other(),
        );
        let workload = attribution.map_or_else(|| "unknown".into(), |a| a.label());
        count_bounded(&mut self.slow_waits_by_workload, workload, "other".into());
    }
}
