//! The lock-contention profile (`tracer-ebpf/src/lock_profile.rs`): no programs of its own (the
//! contention programs add each contended wait to it), two maps read here: the aggregates and
//! the stacks they point to, on handles of their own so a reader never holds the probes.

use std::collections::HashMap as StdHashMap;

use aya::maps::{HashMap, MapData};
use tracer_common::{
    names::map, stack_hash, Counter, ProfileKey, ProfileValue, StackFrames, NO_STACK,
    PROFILE_STACK_DEPTH,
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
    profile: HashMap<MapData, ProfileKey, ProfileValue>,
    stacks: HashMap<MapData, u64, StackFrames>,
}

impl Probes {
    /// Second handles on the profile's maps.
    pub fn profile_maps(&self) -> Result<ProfileMaps, ProbeError> {
        Ok(ProfileMaps {
            profile: HashMap::try_from(reopen(&self.ebpf, map::LOCK_PROFILE)?)
                .map_err(ProbeError::map(map::LOCK_PROFILE))?,
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
        let entries = self.profile.iter().filter_map(Result::ok).collect();
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
        }
    }
}
