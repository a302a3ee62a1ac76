//! Typed access to the maps every family shares (config, per-task state, counters,
//! histograms, the ring buffer). A family's own maps are read in its module, through the same
//! two lookups.

use aya::{
    maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray, PerCpuHashMap, RingBuf},
    Ebpf,
};
use tracer_common::{
    names::map, Config, Counter, TaskState, COUNTER_COUNT, HIST_BUCKETS, HIST_COUNT,
};

use super::{families::faults::ProcFaultsMap, ProbeError, Probes};

/// Map `name` of the object as the typed map `T`.
pub fn typed<'a, T>(ebpf: &'a Ebpf, name: &'static str) -> Result<T, ProbeError>
where
    T: TryFrom<&'a Map, Error = MapError>,
{
    let m = ebpf.map(name).ok_or(ProbeError::MissingMap(name))?;
    T::try_from(m).map_err(ProbeError::map(name))
}

/// Map `name` of the object as the typed map `T`, writable.
pub fn typed_mut<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<T, ProbeError>
where
    T: TryFrom<&'a mut Map, Error = MapError>,
{
    let m = ebpf.map_mut(name).ok_or(ProbeError::MissingMap(name))?;
    T::try_from(m).map_err(ProbeError::map(name))
}

/// The first `len` slots of per-CPU array `name`, each summed over CPUs.
pub fn per_cpu_sums(ebpf: &Ebpf, name: &'static str, len: u32) -> Result<Vec<u64>, ProbeError> {
    let array: PerCpuArray<_, u64> = typed(ebpf, name)?;
    (0..len)
        .map(|i| {
            array
                .get(&i, 0)
                .map(|per_cpu| per_cpu.iter().sum())
                .map_err(ProbeError::map(name))
        })
        .collect()
}

/// A second handle on a per-CPU array of the object, owned: readable while the `Probes` are
/// borrowed elsewhere (under the agent's lock), as the kernel's own updates are per CPU and a
/// read is a copy.
pub(super) fn reopen(ebpf: &Ebpf, name: &'static str) -> Result<Map, ProbeError> {
    // A duplicate of the descriptor, not a reopen by id: BPF_MAP_GET_FD_BY_ID needs
    // CAP_SYS_ADMIN, which the shipped unit and DaemonSet do not grant (the agent failed to
    // start under them); dup(2) needs nothing.
    let again = |data: &MapData| -> Result<MapData, ProbeError> {
        use std::os::fd::AsFd;
        let fd = data.fd().as_fd().try_clone_to_owned().map_err(|e| {
            ProbeError::map(name)(aya::maps::MapError::SyscallError(aya::sys::SyscallError {
                call: "dup",
                io_error: e,
            }))
        })?;
        MapData::from_fd(fd).map_err(ProbeError::map(name))
    };
    match ebpf.map(name) {
        Some(Map::PerCpuArray(data)) => Ok(Map::PerCpuArray(again(data)?)),
        Some(Map::PerCpuHashMap(data)) => Ok(Map::PerCpuHashMap(again(data)?)),
        Some(Map::HashMap(data)) => Ok(Map::HashMap(again(data)?)),
        _ => Err(ProbeError::MissingMap(name)),
    }
}

fn reopen_array(ebpf: &Ebpf, name: &'static str) -> Result<PerCpuArray<MapData, u64>, ProbeError> {
    PerCpuArray::try_from(reopen(ebpf, name)?).map_err(ProbeError::map(name))
}

/// Slot `i` of per-CPU array `name`, summed over CPUs.
fn sum_at(
    array: &PerCpuArray<MapData, u64>,
    name: &'static str,
    i: u32,
) -> Result<u64, ProbeError> {
    array
        .get(&i, 0)
        .map(|per_cpu| per_cpu.iter().sum())
        .map_err(ProbeError::map(name))
}

fn sums(
    array: &PerCpuArray<MapData, u64>,
    name: &'static str,
    len: u32,
) -> Result<Vec<u64>, ProbeError> {
    (0..len).map(|i| sum_at(array, name, i)).collect()
}

/// The aggregate maps a scrape reads (counters, histograms, userfaultfd errors: about 1,400
/// lookups; per-process faults: a walk of up to 16,384 entries), on their own handles so that
/// a scrape reads them without the agent's lock.
pub struct Aggregates {
    counters: PerCpuArray<MapData, u64>,
    histograms: PerCpuArray<MapData, u64>,
    uffd_errors: PerCpuArray<MapData, u64>,
    pub proc_faults: ProcFaultsMap,
}

impl Aggregates {
    pub fn counters(&self) -> Result<Counters, ProbeError> {
        sums(&self.counters, map::COUNTERS, COUNTER_COUNT).map(Counters)
    }

    /// One counter summed over CPUs: one lookup, cheap enough to poll.
    pub fn counter(&self, c: Counter) -> Result<u64, ProbeError> {
        sum_at(&self.counters, map::COUNTERS, c as u32)
    }

    pub fn histograms(&self) -> Result<Vec<[u64; HIST_BUCKETS as usize]>, ProbeError> {
        let flat = sums(&self.histograms, map::HISTOGRAMS, HIST_COUNT * HIST_BUCKETS)?;
        Ok(flat
            .chunks_exact(HIST_BUCKETS as usize)
            .map(|c| {
                let mut row = [0u64; HIST_BUCKETS as usize];
                row.copy_from_slice(c);
                row
            })
            .collect())
    }

    pub fn uffd_errors(&self) -> Result<Vec<u64>, ProbeError> {
        sums(
            &self.uffd_errors,
            map::UFFD_ERRORS,
            tracer_common::UFFD_ERROR_SLOTS,
        )
    }
}

impl Probes {
    /// Rewrites the runtime config; takes effect for the next event.
    pub fn set_config(&mut self, config: &Config) -> Result<(), ProbeError> {
        let mut array: Array<_, Config> = typed_mut(&mut self.ebpf, map::CONFIG)?;
        array
            .set(0, config, 0)
            .map_err(ProbeError::map(map::CONFIG))
    }

    /// The event ring buffer; can be taken once.
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, ProbeError> {
        let m = self
            .ebpf
            .take_map(map::EVENTS)
            .ok_or(ProbeError::MissingMap(map::EVENTS))?;
        RingBuf::try_from(m).map_err(ProbeError::map(map::EVENTS))
    }

    /// The kernel's per-task state right now: (tid, state) of every tracked task. Entries that
    /// change or vanish while the map is walked are skipped, not errors.
    pub fn task_states(&self) -> Result<Vec<(u32, TaskState)>, ProbeError> {
        let states: HashMap<_, u32, TaskState> = typed(&self.ebpf, map::TASK_STATE)?;
        Ok(states.iter().filter_map(Result::ok).collect())
    }

    /// Deletes the per-task entries of these tids; returns how many were there.
    pub fn forget_tasks(&mut self, tids: &[u32]) -> Result<usize, ProbeError> {
        let mut states: HashMap<_, u32, TaskState> = typed_mut(&mut self.ebpf, map::TASK_STATE)?;
        // An entry already gone (the task's exit program raced us) is not an error.
        Ok(tids.iter().filter(|t| states.remove(t).is_ok()).count())
    }

    /// Capacity of the per-task state map.
    pub fn max_tasks(&self) -> u32 {
        self.max_tasks
    }

    /// Second handles on the aggregate maps, for readers that must not hold the probes.
    pub fn aggregates(&self) -> Result<Aggregates, ProbeError> {
        Ok(Aggregates {
            counters: reopen_array(&self.ebpf, map::COUNTERS)?,
            histograms: reopen_array(&self.ebpf, map::HISTOGRAMS)?,
            uffd_errors: reopen_array(&self.ebpf, map::UFFD_ERRORS)?,
            proc_faults: ProcFaultsMap(
                PerCpuHashMap::try_from(reopen(&self.ebpf, map::PROC_FAULTS)?)
                    .map_err(ProbeError::map(map::PROC_FAULTS))?,
            ),
        })
    }

    /// Counters summed over CPUs, indexed by `Counter`.
    pub fn counters(&self) -> Result<Counters, ProbeError> {
        per_cpu_sums(&self.ebpf, map::COUNTERS, COUNTER_COUNT).map(Counters)
    }

    /// Histograms summed over CPUs: `HIST_COUNT` rows of `HIST_BUCKETS` log2 buckets.
    pub fn histograms(&self) -> Result<Vec<[u64; HIST_BUCKETS as usize]>, ProbeError> {
        let flat = per_cpu_sums(&self.ebpf, map::HISTOGRAMS, HIST_COUNT * HIST_BUCKETS)?;
        Ok(flat
            .chunks_exact(HIST_BUCKETS as usize)
            .map(|c| {
                let mut row = [0u64; HIST_BUCKETS as usize];
                row.copy_from_slice(c);
                row
            })
            .collect())
    }
}

/// Kernel counters summed over CPUs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters(pub Vec<u64>);

impl Counters {
    pub fn get(&self, c: Counter) -> u64 {
        self.0.get(c as usize).copied().unwrap_or(0)
    }

    /// Per-counter difference since `earlier` (counters only grow).
    pub fn since(&self, earlier: &Counters) -> Counters {
        Counters(
            self.0
                .iter()
                .enumerate()
                .map(|(i, v)| v.saturating_sub(earlier.0.get(i).copied().unwrap_or(0)))
                .collect(),
        )
    }
}
