//! The lock-contention profile (`tracer-ebpf/src/lock_profile.rs`): no programs of its own (the
//! contention programs add each contended wait to it), two maps read here: the aggregates and
//! the stacks they point to, on handles of their own so a reader never holds the probes.

use std::collections::HashMap as StdHashMap;

use aya::maps::{HashMap, MapData, PerCpuArray, PerCpuHashMap, PerCpuValues};
use tracer_common::{
    names::map, stack_hash, Counter, ProfileKey, ProfilePending, ProfileValue, StackFrames,
    NO_STACK, PROFILE_STACK_DEPTH,
};

use crate::{
    core::lock_profile::Drops,
    kernel::probes::{maps::reopen, Counters, ProbeError, Probes},
};

/// The profile as the kernel holds it: aggregates, the stacks they name, and the drop counters.
#[derive(Clone, Debug, Default)]
pub struct RawProfile {
    pub entries: Vec<(ProfileKey, ProfileValue)>,
    pub stacks: StdHashMap<u64, [u64; PROFILE_STACK_DEPTH]>,
    pub drops: Drops,
    /// Keys in the kernel's table (the CPUs' batches not counted): how full it is.
    pub keys_in_table: usize,
}

impl RawProfile {
    /// The frames of `key`'s stack, leaf first, without the zeros past its end; empty for
    /// `NO_STACK` or a stack not (yet) readable.
    pub fn frames(&self, key: &ProfileKey) -> Vec<u64> {
        if key.stack == NO_STACK {
            return Vec::new();
        }
        self.stacks
            .get(&key.stack)
            .map(|ips| ips.iter().copied().take_while(|&ip| ip != 0).collect())
            .unwrap_or_default()
    }
}

/// The drop counters of the profile, from the kernel's counters.
pub fn drops(c: &Counters) -> Drops {
    Drops {
        waits: c.get(Counter::ProfileWaits),
        table_full: c.get(Counter::ProfileFull),
        no_stack: c.get(Counter::ProfileNoStack),
        stacks_full: c.get(Counter::ProfileStacksFull),
        stack_collisions: c.get(Counter::ProfileStackCollision),
        busy: c.get(Counter::ProfileBusy),
    }
}

pub struct ProfileMaps {
    profile: PerCpuHashMap<MapData, ProfileKey, ProfileValue>,
    pending: PerCpuArray<MapData, ProfilePending>,
    stacks: HashMap<MapData, u64, StackFrames>,
}

impl Probes {
    /// Second handles on the profile's maps.
    pub fn profile_maps(&self) -> Result<ProfileMaps, ProbeError> {
        Ok(ProfileMaps {
            profile: PerCpuHashMap::try_from(reopen(&self.ebpf, map::LOCK_PROFILE)?)
                .map_err(ProbeError::map(map::LOCK_PROFILE))?,
            pending: PerCpuArray::try_from(reopen(&self.ebpf, map::PROFILE_PENDING)?)
                .map_err(ProbeError::map(map::PROFILE_PENDING))?,
            stacks: HashMap::try_from(reopen(&self.ebpf, map::LOCK_STACKS)?)
                .map_err(ProbeError::map(map::LOCK_STACKS))?,
        })
    }
}

impl ProfileMaps {
    /// A walk of both maps. Entries that change while walked are read as they are then (the
    /// counts only grow); a stored stack whose frames do not hash to its key (a torn read) is
    /// left out, so its waits show without a stack rather than under a wrong one.
    pub fn read(&self, counters: &Counters) -> RawProfile {
        let mut entries: Vec<(ProfileKey, ProfileValue)> = self
            .profile
            .iter()
            .filter_map(Result::ok)
            .map(|(k, per_cpu)| (k, merged(&per_cpu)))
            .filter(|(_, v)| v.count > 0)
            .collect();
        let keys_in_table = entries.len();
        // The CPUs' batches, read after the table: a batch written to the table in between is
        // missing from this reading (the next has it), never counted twice.
        if let Ok(batches) = self.pending.get(&0, 0) {
            for b in batches.iter().filter(|b| b.value.count > 0) {
                match entries.iter_mut().find(|(k, _)| *k == b.key) {
                    Some((_, v)) => add_batch(v, &b.value),
                    None => entries.push((b.key, b.value)),
                }
            }
        }
        let stacks = self
            .stacks
            .iter()
            .filter_map(Result::ok)
            .filter(|(h, f)| stack_hash(&f.ips) == *h)
            .map(|(h, f)| (h, f.ips))
            .collect();
        RawProfile {
            entries,
            stacks,
            drops: drops(counters),
            keys_in_table,
        }
    }
}

/// One key's per-CPU values as one: counts and totals added, the longest wait, and the owner
/// and `mm_tgid` of the CPU that counted most (each CPU keeps its last; any is a true one).
fn merged(per_cpu: &PerCpuValues<ProfileValue>) -> ProfileValue {
    let mut out = ProfileValue::default();
    let mut busiest = 0;
    for v in per_cpu.iter() {
        out.count += v.count;
        out.total_ns += v.total_ns;
        out.max_ns = out.max_ns.max(v.max_ns);
        if v.count > busiest {
            busiest = v.count;
            out.owner = v.owner;
            out.mm_tgid = v.mm_tgid;
        }
    }
    out
}

/// A batch's waits added to an aggregate of the same key.
fn add_batch(into: &mut ProfileValue, b: &ProfileValue) {
    into.count += b.count;
    into.total_ns += b.total_ns;
    into.max_ns = into.max_ns.max(b.max_ns);
}
