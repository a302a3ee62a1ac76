//! User-space locks (`tracer-ebpf/src/futex.rs`): futex sleeps seen from the scheduler hooks
//! (the `uffd` family's programs, which serve both, so what is given up without them is said
//! there), the table of sleeps in progress, the per-process waiting time and the user-lock
//! profile.

use aya::maps::{HashMap, PerCpuHashMap};
use tracer_common::{futex_op, names::map, outcome, window_ok, FutexEvent, FutexTime, FutexWait};

use crate::{
    core::{
        event::{Addr, EventKind, FutexOutcome},
        user_lock::{self, FutexSleep},
    },
    kernel::{
        decode::{DecodeError, Parts, Record},
        probes::{maps, ProbeError, Probes},
        user_locks,
    },
};

/// The sleep as the core reads it.
pub fn sleep_of(w: &FutexWait) -> FutexSleep {
    FutexSleep {
        op: w.op,
        val: w.val,
        uaddr: w.uaddr,
        window: w.window,
        before_ok: w.window_ok & window_ok::BEFORE != 0,
        after_ok: w.window_ok & window_ok::AFTER != 0,
    }
}

fn outcome_of(v: u8) -> Result<FutexOutcome, DecodeError> {
    Ok(match v {
        outcome::WOKEN => FutexOutcome::Woken,
        outcome::SIGNAL => FutexOutcome::Signal,
        outcome::TIMEOUT => FutexOutcome::Timeout,
        outcome::OTHER => FutexOutcome::Other,
        value => {
            return Err(DecodeError::BadField {
                what: "futex wait outcome",
                value,
            })
        }
    })
}

/// `FutexWaitBegin` (record mode) / `FutexWaitEnd`. A begin's owner is checked against the
/// host now (`user_locks::begin`); an end implies its begin without an owner (the wait is
/// over: nothing to follow).
pub fn decode(kind: tracer_common::EventKind, record: &Record) -> Result<Parts, DecodeError> {
    let ev: FutexEvent = record.read()?;
    let w = ev.wait;
    if kind == tracer_common::EventKind::FutexWaitBegin {
        let begin = user_locks::begin(record.header.tgid, record.header.tid, &w);
        return Ok(Parts::alone(record.now(begin)));
    }
    let end = record.now(EventKind::FutexWaitEnd {
        futex: Addr(w.uaddr),
        outcome: outcome_of(ev.outcome)?,
        waker_tid: (ev.waker_tid != 0).then_some(ev.waker_tid),
    });
    let begin = user_locks::begin_unchecked(&w);
    Ok(Parts::ending(record, end, w.since_ns, begin))
}

/// Whether a futex op is one the kernel side records (for tests of the wire constants).
pub fn records(op: u32) -> bool {
    op == futex_op::WAITV || futex_op::sleeps(op & futex_op::CMD_MASK)
}

impl Probes {
    /// The futex sleeps in progress: (tid, sleep). Entries that vanish during the walk are
    /// skipped.
    pub fn futex_waits(&self) -> Result<Vec<(u32, FutexWait)>, ProbeError> {
        let table: HashMap<_, u32, FutexWait> = maps::typed(&self.ebpf, map::FUTEX_WAITS)?;
        Ok(table.iter().filter_map(Result::ok).collect())
    }

    /// Deletes the sleeps of these tids (tasks gone whose exit was not seen).
    pub fn forget_futex_waits(&mut self, tids: &[u32]) -> Result<usize, ProbeError> {
        let mut table: HashMap<_, u32, FutexWait> =
            maps::typed_mut(&mut self.ebpf, map::FUTEX_WAITS)?;
        Ok(tids.iter().filter(|t| table.remove(t).is_ok()).count())
    }

    /// Futex waiting time per process (tgid → waits, nanoseconds), summed over CPUs.
    pub fn futex_time(&self) -> Result<Vec<(u32, FutexTime)>, ProbeError> {
        let table: PerCpuHashMap<_, u32, FutexTime> = maps::typed(&self.ebpf, map::FUTEX_TIME)?;
        Ok(table
            .iter()
            .filter_map(Result::ok)
            .map(|(tgid, per_cpu)| {
                let sum = per_cpu.iter().fold(FutexTime::default(), |a, t| FutexTime {
                    waits: a.waits + t.waits,
                    wait_ns: a.wait_ns + t.wait_ns,
                });
                (tgid, sum)
            })
            .collect())
    }

    /// Deletes the waiting time of processes gone (after the caller kept their totals).
    pub fn forget_futex_time(&mut self, tgids: &[u32]) -> Result<usize, ProbeError> {
        let mut table: PerCpuHashMap<_, u32, FutexTime> =
            maps::typed_mut(&mut self.ebpf, map::FUTEX_TIME)?;
        Ok(tgids.iter().filter(|t| table.remove(t).is_ok()).count())
    }
}

/// The core's reading of a sleep (its op, what the lock is, a claimed owner).
pub fn reading(w: &FutexWait) -> Option<user_lock::Reading> {
    user_lock::read(&sleep_of(w))
}

/// The user-lock profile as the kernel holds it: aggregates (summed over CPUs) and the stacks
/// they name.
#[derive(Clone, Debug, Default)]
pub struct RawUserProfile {
    pub entries: Vec<(
        tracer_common::FutexProfileKey,
        tracer_common::FutexProfileValue,
    )>,
    pub stacks: std::collections::HashMap<u64, Vec<u64>>,
    pub table_full: u64,
    pub no_stack: u64,
}

/// Second handles on the user-lock profile's maps: read without holding the probes.
pub struct UserProfileMaps {
    profile: PerCpuHashMap<
        aya::maps::MapData,
        tracer_common::FutexProfileKey,
        tracer_common::FutexProfileValue,
    >,
    stacks: HashMap<aya::maps::MapData, u64, tracer_common::FutexStack>,
}

impl Probes {
    pub fn user_profile_maps(&self) -> Result<UserProfileMaps, ProbeError> {
        Ok(UserProfileMaps {
            profile: PerCpuHashMap::try_from(maps::reopen(&self.ebpf, map::FUTEX_PROFILE)?)
                .map_err(ProbeError::map(map::FUTEX_PROFILE))?,
            stacks: HashMap::try_from(maps::reopen(&self.ebpf, map::FUTEX_STACKS)?)
                .map_err(ProbeError::map(map::FUTEX_STACKS))?,
        })
    }
}

impl UserProfileMaps {
    /// A walk of both maps. A stored stack whose frames do not hash to its key (a torn read)
    /// is left out: its sleeps show without a stack rather than under a wrong one.
    pub fn read(&self, counters: &crate::kernel::probes::Counters) -> RawUserProfile {
        let entries = self
            .profile
            .iter()
            .filter_map(Result::ok)
            .map(|(k, per_cpu)| {
                let v = per_cpu
                    .iter()
                    .fold(tracer_common::FutexProfileValue::default(), |a, v| {
                        tracer_common::FutexProfileValue {
                            count: a.count + v.count,
                            total_ns: a.total_ns + v.total_ns,
                        }
                    });
                (k, v)
            })
            .filter(|(_, v)| v.count > 0)
            .collect();
        let stacks = self
            .stacks
            .iter()
            .filter_map(Result::ok)
            .filter(|(h, f)| {
                tracer_common::futex_stack_hash(&f.ips, true) == *h
                    || tracer_common::futex_stack_hash(&f.ips, false) == *h
            })
            .map(|(h, f)| (h, f.ips.iter().copied().take_while(|&ip| ip != 0).collect()))
            .collect();
        RawUserProfile {
            entries,
            stacks,
            table_full: counters.get(tracer_common::Counter::FutexProfileFull),
            no_stack: counters.get(tracer_common::Counter::FutexNoStack),
        }
    }
}
