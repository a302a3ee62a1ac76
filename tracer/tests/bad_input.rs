//! Bad input never panics: arbitrary bytes and mutated traces through `replay` end in events or
//! in one error line naming the line; arbitrary interleavings of records, snapshots and losses
//! through the live feed keep the model consistent. Bounded to a few seconds.

use proptest::prelude::*;
use tracer::{
    commands::replay::replay,
    core::detect::Thresholds,
    core::event::{Addr, Event, EventKind, LockMode, LockType, UffdOp},
    core::model::{Blocked, Model},
    kernel::decode::{Decoded, Reasons},
    kernel::live::LiveFeed,
};
use tracer_common::{mode, reason, Hold, TaskState};

const SEED: &str = include_str!("traces/uffd-cross-process-deadlock.jsonl");

/// Replays `input`; an error must be one line starting with "line N:".
fn replay_is_clean(input: &[u8]) -> Result<(), TestCaseError> {
    match replay(input, Thresholds::default()) {
        Ok(_) => Ok(()),
        Err(e) => {
            let text = e.to_string();
            prop_assert!(text.starts_with("line "), "error without a line: {text}");
            prop_assert!(!text.contains('\n'), "error of several lines: {text}");
            Ok(())
        }
    }
}

/// An edit of a valid trace: the damage real files suffer (cut, spliced, bit-flipped, retyped).
#[derive(Clone, Debug)]
enum Edit {
    Flip(usize, u8),
    Delete(usize, usize),
    Duplicate(usize, usize),
    Insert(usize, Vec<u8>),
    Truncate(usize),
    /// Replace the n-th JSON value (after a ':') with this text.
    Retype(usize, &'static str),
}

fn edit() -> impl Strategy<Value = Edit> {
    let pos = 0..SEED.len();
    prop_oneof![
        (pos.clone(), any::<u8>()).prop_map(|(p, b)| Edit::Flip(p, b)),
        (pos.clone(), 0..200usize).prop_map(|(p, n)| Edit::Delete(p, n)),
        (pos.clone(), 0..400usize).prop_map(|(p, n)| Edit::Duplicate(p, n)),
        (pos.clone(), proptest::collection::vec(any::<u8>(), 0..40))
            .prop_map(|(p, b)| Edit::Insert(p, b)),
        pos.clone().prop_map(Edit::Truncate),
        (
            0..120usize,
            prop_oneof![
                Just("-1"),
                Just("18446744073709551616"),
                Just("1e400"),
                Just("\"0x\""),
                Just("\"0xffffffffffffffffff\""),
                Just("null"),
                Just("[]"),
                Just("{}"),
                Just("true"),
                Just("\"teleport\""),
                Just("4294967296"),
                Just("0"),
            ]
        )
            .prop_map(|(n, v)| Edit::Retype(n, v)),
    ]
}

fn apply(bytes: &mut Vec<u8>, e: &Edit) {
    let clamp = |p: usize, len: usize| p.min(len);
    match e {
        Edit::Flip(p, b) => {
            if let Some(x) = bytes.get_mut(*p) {
                *x ^= b | 1;
            }
        }
        Edit::Delete(p, n) => {
            let a = clamp(*p, bytes.len());
            let b = clamp(a + n, bytes.len());
            bytes.drain(a..b);
        }
        Edit::Duplicate(p, n) => {
            let a = clamp(*p, bytes.len());
            let b = clamp(a + n, bytes.len());
            let copy = bytes[a..b].to_vec();
            bytes.splice(b..b, copy);
        }
        Edit::Insert(p, ins) => {
            let a = clamp(*p, bytes.len());
            bytes.splice(a..a, ins.iter().copied());
        }
        Edit::Truncate(p) => bytes.truncate(*p),
        Edit::Retype(n, v) => {
            let colons: Vec<usize> = bytes
                .iter()
                .enumerate()
                .filter(|(_, &b)| b == b':')
                .map(|(i, _)| i + 1)
                .collect();
            if colons.is_empty() {
                return;
            }
            let start = colons[n % colons.len()];
            let end = bytes[start..]
                .iter()
                .position(|&b| b == b',' || b == b'}')
                .map_or(bytes.len(), |e| start + e);
            bytes.splice(start..end, v.bytes());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn mutated_traces_replay_or_fail_with_one_line(edits in proptest::collection::vec(edit(), 1..6)) {
        let mut bytes = SEED.as_bytes().to_vec();
        for e in &edits {
            apply(&mut bytes, e);
        }
        replay_is_clean(&bytes)?;
    }

    #[test]
    fn arbitrary_bytes_replay_or_fail_with_one_line(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        replay_is_clean(&bytes)?;
    }

}

proptest! {
    // Regex-generated input is slow to make in a debug build: fewer, richer cases.
    #![proptest_config(ProptestConfig::with_cases(100))]

    #[test]
    fn arbitrary_json_lines_replay_or_fail_with_one_line(lines in proptest::collection::vec("\\{\"ts_ns\":[0-9]{1,20},\"tid\":[0-9]{1,10},\"pid\":[0-9]{1,3},\"kind\":\"[a-z_]{4,20}\"(,\"[a-z_]{1,8}\":(true|[0-9]{1,5}|\"0x[0-9a-f]{1,17}\"|\"[A-Z]{3,12}\")){0,5}\\}", 0..30)) {
        replay_is_clean(lines.join("\n").as_bytes())?;
    }
}

// ---- the live feed under arbitrary interleavings ----

const MS: u64 = 1_000_000;
const MMS: [Addr; 2] = [Addr(0xa000), Addr(0xb000)];

/// One kernel entry of a generated snapshot: tid, tgid, a wait and a hold (mm index, write).
type Entry = (u32, u32, Option<(usize, bool)>, Option<(usize, bool)>);

#[derive(Clone, Debug)]
enum Step {
    Record(Event),
    /// (tid, tgid, wait on mm index, hold on mm index) per task; taken `back` ms before now.
    Snapshot(Vec<Entry>, u64),
    Lost,
}

fn event_kind() -> impl Strategy<Value = EventKind> {
    let mm = (0..2usize).prop_map(|i| MMS[i]);
    let mode = prop_oneof![Just(LockMode::Read), Just(LockMode::Write)];
    let owner = proptest::option::of(1..4u32);
    prop_oneof![
        (mm.clone(), mode.clone(), owner.clone())
            .prop_map(|(mm, mode, mm_pid)| EventKind::MmapLockStart { mm, mode, mm_pid }),
        (mm.clone(), mode.clone(), any::<bool>(), owner.clone()).prop_map(
            |(mm, mode, success, mm_pid)| EventKind::MmapLockAcquire {
                mm,
                mode,
                success,
                mm_pid
            }
        ),
        (mm.clone(), mode.clone(), owner)
            .prop_map(|(mm, mode, mm_pid)| EventKind::MmapLockRelease { mm, mode, mm_pid }),
        (proptest::option::of(1..8u32)).prop_map(|owner_tid| EventKind::LockWaitBegin {
            lock: Addr(0x10),
            lock_type: LockType::Mutex,
            owner_tid,
            mm: None,
        }),
        Just(EventKind::LockWaitEnd {
            lock: Addr(0x10),
            ret: 0,
            mm: None,
        }),
        Just(EventKind::UffdWaitBegin {
            uffd: Addr(0x20),
            addr: Addr(0x1000)
        }),
        Just(EventKind::UffdWaitEnd { uffd: Addr(0x20) }),
        Just(EventKind::UffdIoctlBegin {
            uffd: Addr(0x20),
            op: UffdOp::Copy
        }),
        Just(EventKind::TaskExit {}),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    let slot = proptest::option::of((0..2usize, any::<bool>()));
    prop_oneof![
        6 => (1..8u32, 1..4u32, 0..400u64, event_kind()).prop_map(|(tid, pid, dt, kind)| {
            Step::Record(Event { ts_ns: dt * MS, tid, pid, comm: None, kind })
        }),
        2 => (proptest::collection::vec((1..8u32, 1..4u32, slot.clone(), slot), 0..6), 0..300u64)
            .prop_map(|(tasks, back)| Step::Snapshot(tasks, back)),
        1 => Just(Step::Lost),
    ]
}

/// The model's indexes agree with its tasks.
fn consistent(m: &Model) -> Result<(), TestCaseError> {
    for (tid, t) in &m.tasks {
        prop_assert_eq!(
            t.blocked.is_some(),
            m.blocked.contains(tid),
            "blocked index of {}",
            tid
        );
        for mm in t.holds.keys() {
            let l = m.mm_locks.get(mm);
            prop_assert!(
                l.is_some_and(
                    |l| l.readers.contains_key(tid) || l.writer.is_some_and(|(w, _)| w == *tid)
                ),
                "hold of {} on {} missing from its lock",
                tid,
                mm
            );
        }
        if let Some(Blocked::MmapLock { mm, .. }) = &t.blocked {
            prop_assert!(m
                .mm_locks
                .get(mm)
                .is_some_and(|l| l.waiters.contains_key(tid)));
        }
    }
    for tid in &m.blocked {
        prop_assert!(m.tasks.contains_key(tid), "blocked task {} unknown", tid);
    }
    for (mm, l) in &m.mm_locks {
        for tid in l
            .waiters
            .keys()
            .chain(l.readers.keys())
            .chain(l.writer.as_ref().map(|(w, _)| w))
        {
            prop_assert!(
                m.tasks.contains_key(tid),
                "lock {} names gone task {}",
                mm,
                tid
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn the_live_feed_stays_consistent_under_any_interleaving(steps in proptest::collection::vec(step(), 1..60)) {
        let mut feed = LiveFeed::new(Thresholds::default(), 5 * MS, 20 * MS)
            .with_liveness(Box::new(|pid| pid != 3));
        let mut now = 0u64;
        let mut lost = 0u64;
        for s in steps {
            match s {
                Step::Record(mut ev) => {
                    now += ev.ts_ns;
                    ev.ts_ns = now;
                    let d = Decoded { event: ev, reasons: Reasons(reason::RECORD), since_ns: None, implied: None, cgroup_id: None };
                    let alerts = feed.on_record(&d);
                    feed.vet(alerts, Some(lost));
                }
                Step::Snapshot(tasks, back) => {
                    let taken = now.saturating_sub(back * MS);
                    let states: Vec<(u32, TaskState)> = tasks
                        .into_iter()
                        .map(|(tid, tgid, wait, hold)| {
                            let mut st = TaskState { tgid, ..Default::default() };
                            if let Some((i, w)) = wait {
                                st.wait_mm = MMS[i].0;
                                st.wait_mode = if w { mode::WRITE } else { mode::READ };
                                st.wait_since_ns = taken.saturating_sub(50 * MS);
                            }
                            if let Some((i, w)) = hold {
                                st.holds[0] = Hold {
                                    mm: MMS[i].0,
                                    since_ns: taken.saturating_sub(100 * MS),
                                    mode: if w { mode::WRITE } else { mode::READ },
                                    depth: 1,
                                    ..Default::default()
                                };
                            }
                            (tid, st)
                        })
                        .collect();
                    feed.on_snapshot(&states, &[], taken, lost);
                }
                Step::Lost => lost += 1,
            }
            consistent(feed.engine().model())?;
        }
    }
}
