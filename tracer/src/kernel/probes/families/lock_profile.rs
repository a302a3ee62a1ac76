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
    /// The aggregate table again, for `retire`'s lookup-and-delete (aya 0.14 has none).
    profile_data: MapData,
    pending: PerCpuArray<MapData, ProfilePending>,
    stacks: HashMap<MapData, u64, StackFrames>,
}

impl Probes {
    /// Second handles on the profile's maps.
    pub fn profile_maps(&self) -> Result<ProfileMaps, ProbeError> {
        Ok(ProfileMaps {
            profile: PerCpuHashMap::try_from(reopen(&self.ebpf, map::LOCK_PROFILE)?)
                .map_err(ProbeError::map(map::LOCK_PROFILE))?,
            profile_data: match reopen(&self.ebpf, map::LOCK_PROFILE)? {
                aya::maps::Map::PerCpuHashMap(data) => data,
                _ => return Err(ProbeError::MissingMap(map::LOCK_PROFILE)),
            },
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
        let (mut entries, batches) = self.consistent_read();
        let keys_in_table = entries.len();
        add_aggregates(
            &mut entries,
            batches
                .iter()
                .filter(|b| b.value.count > 0)
                .map(|b| (b.key, b.value)),
        );
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

/// Reads of the table retried while a CPU wrote a batch to it meanwhile.
const READ_TRIES: usize = 4;

impl ProfileMaps {
    fn table(&self) -> Vec<(ProfileKey, ProfileValue)> {
        self.profile
            .iter()
            .filter_map(Result::ok)
            .map(|(k, per_cpu)| (k, merged(&per_cpu)))
            .filter(|(_, v)| v.count > 0)
            .collect()
    }

    fn batches(&self) -> Vec<ProfilePending> {
        self.pending
            .get(&0, 0)
            .map(|b| b.iter().copied().collect())
            .unwrap_or_default()
    }

    /// The table and the CPUs' batches as of one moment: the batches are read before and after
    /// the table, and the reading is taken when no CPU wrote a batch to the table meanwhile
    /// (its `flushes` even and unchanged), so no batch is missed or counted twice. After
    /// `READ_TRIES` busy tries the last one is taken: a batch written during its walk may be
    /// missing from it (an undercount until the next reading), never counted twice.
    fn consistent_read(&self) -> (Vec<(ProfileKey, ProfileValue)>, Vec<ProfilePending>) {
        let mut last = None;
        for _ in 0..READ_TRIES {
            let before = self.batches();
            let table = self.table();
            let after = self.batches();
            let quiet = before.len() == after.len()
                && before
                    .iter()
                    .zip(&after)
                    .all(|(b, a)| b.flushes == a.flushes && a.flushes % 2 == 0);
            if quiet {
                return (table, after);
            }
            last = Some((table, after));
        }
        last.unwrap_or_else(|| (self.table(), self.batches()))
    }

    /// Takes `key`'s aggregate out of the kernel's table and returns it (its CPUs' values
    /// merged), in one step (`BPF_MAP_LOOKUP_AND_DELETE_ELEM`, hash maps since 5.14): a wait
    /// added up to that moment is in what comes back. A program that still holds the value
    /// (a wait on a key idle for a whole `--profile-idle-after`, ending in these nanoseconds)
    /// adds to the freed element, which the preallocated table may already have given to
    /// another key: one wait lost or credited to that key. `None` when the key is gone or the
    /// kernel refuses.
    pub fn take(&self, key: &ProfileKey) -> Option<ProfileValue> {
        use std::os::fd::{AsFd as _, AsRawFd as _};
        let cpus = aya::util::nr_cpus().ok()?;
        // Per-CPU values come 8-byte aligned, one per possible CPU.
        let mut values = vec![ProfileValue::default(); cpus];
        #[repr(C)]
        struct ElemAttr {
            map_fd: u32,
            _pad: u32,
            key: u64,
            value: u64,
            flags: u64,
        }
        let attr = ElemAttr {
            map_fd: self.profile_data.fd().as_fd().as_raw_fd() as u32,
            _pad: 0,
            key: key as *const ProfileKey as u64,
            value: values.as_mut_ptr() as u64,
            flags: 0,
        };
        const BPF_MAP_LOOKUP_AND_DELETE_ELEM: libc::c_long = 21;
        // SAFETY: the attribute points at a live key and a buffer of one value per possible
        // CPU, the size the kernel writes for a per-CPU hash map.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_AND_DELETE_ELEM,
                &attr as *const ElemAttr,
                std::mem::size_of::<ElemAttr>(),
            )
        };
        if rc != 0 {
            return None;
        }
        let mut out = ProfileValue::default();
        let mut busiest = 0;
        for v in &values {
            merge_cpu(&mut out, v, &mut busiest);
        }
        Some(out)
    }
}

/// One key's per-CPU values as one: counts and totals added, the longest wait, and the owner
/// and `mm_tgid` of the CPU that counted most (each CPU keeps its last; any is a true one).
fn merged(per_cpu: &PerCpuValues<ProfileValue>) -> ProfileValue {
    let mut out = ProfileValue::default();
    let mut busiest = 0;
    for v in per_cpu.iter() {
        merge_cpu(&mut out, v, &mut busiest);
    }
    out
}

/// One CPU's value added to `out` (see `merged`).
fn merge_cpu(out: &mut ProfileValue, v: &ProfileValue, busiest: &mut u64) {
    out.count += v.count;
    out.total_ns += v.total_ns;
    out.max_ns = out.max_ns.max(v.max_ns);
    if v.count > *busiest {
        *busiest = v.count;
        out.owner = v.owner;
        out.mm_tgid = v.mm_tgid;
    }
}

/// `extra` added to `entries`: to the same key's aggregate, or as its own.
pub fn add_aggregates(
    entries: &mut Vec<(ProfileKey, ProfileValue)>,
    extra: impl IntoIterator<Item = (ProfileKey, ProfileValue)>,
) {
    let mut at: StdHashMap<ProfileKey, usize> = entries
        .iter()
        .enumerate()
        .map(|(i, (k, _))| (*k, i))
        .collect();
    for (key, value) in extra {
        match at.get(&key) {
            Some(&i) => add_batch(&mut entries[i].1, &value),
            None => {
                at.insert(key, entries.len());
                entries.push((key, value));
            }
        }
    }
}

/// A batch's (or a retired aggregate's) waits added to an aggregate of the same key.
pub fn add_batch(into: &mut ProfileValue, b: &ProfileValue) {
    into.count += b.count;
    into.total_ns += b.total_ns;
    into.max_ns = into.max_ns.max(b.max_ns);
}
