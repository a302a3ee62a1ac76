//! Snapshots: the kernel's per-task map (and the host's userfaultfds) read into the feed, which
//! confirms or corrects what the ring buffer said.

use anyhow::Result;
use tracer_common::Counter;

use crate::kernel::{
    live::{monotonic_ns, proc_exists},
    probes::uffd_gate::LINGER,
};

use super::state::{lock, raise_all, AgentState, Shared};

/// The userfaultfd scan (`uffd_gate`): attaches or detaches the ioctl hooks, and gives the
/// model the processes holding each context in scope.
pub fn scan_uffds(st: &mut AgentState, taken: u64) -> Result<()> {
    if !st.probes.ioctls_gated() {
        return Ok(());
    }
    let scan = st.probes.scan_uffds(std::time::Instant::now())?;
    match scan.switched {
        Some(true) => log::info!(
            "userfaultfd in use ({} descriptors): ioctl hooks attached",
            scan.files.len()
        ),
        Some(false) => log::info!(
            "no userfaultfd for {}: ioctl hooks detached",
            humantime::format_duration(LINGER)
        ),
        None => {}
    }
    let held: Vec<(u32, u64)> = scan
        .files
        .iter()
        .filter(|f| st.scope.admits(f.tgid))
        .map(|f| (f.tgid, f.ctx))
        .collect();
    let waiters: Vec<(u32, u32, u64, u64)> = scan
        .waiters
        .iter()
        .copied()
        .filter(|(_, pid, _, _)| st.scope.admits(*pid))
        .collect();
    let alerts = st.feed.on_uffd_scan(&held, &waiters, taken);
    raise_all(st, alerts);
    Ok(())
}

/// Handlers whose first ioctl record was lost come back from the kernel's handler table; the
/// entries of tasks gone are deleted, as nothing in the kernel finds them at exit.
fn restore_uffd_handlers(st: &mut AgentState, taken: u64) -> Result<()> {
    let table = st.probes.uffd_handlers()?;
    if table.is_empty() {
        return Ok(());
    }
    let (alerts, gone) = st.feed.on_uffd_handlers(&table, taken);
    raise_all(st, alerts);
    if !gone.is_empty() {
        let deleted = st.probes.forget_uffd_handlers(&gone)?;
        log::debug!("deleted {deleted} userfaultfd handler entries of tasks gone");
    }
    Ok(())
}

/// Reads the kernel's per-task map into the feed. The lost-record counter is read first and
/// the time the walk starts (not its end) dates the snapshot.
pub fn snapshot_into(shared: &Shared) -> Result<()> {
    let mut st = lock(shared);
    let lost = st.probes.counters()?.get(Counter::RingbufFull);
    let taken = monotonic_ns();
    scan_uffds(&mut st, taken)?;
    restore_uffd_handlers(&mut st, taken)?;
    st.probes.prune_exited(proc_exists);
    let mut states = st.probes.task_states()?;
    st.task_entries = states.len();
    let stale = st
        .reclaimer
        .due(states.iter().map(|(tid, _)| *tid), proc_exists);
    if !stale.is_empty() {
        let deleted = st.probes.forget_tasks(&stale)?;
        st.reclaimer.deleted(deleted);
        log::debug!("deleted {deleted} kernel task entries of tasks gone from the host");
        states.retain(|(tid, _)| !stale.contains(tid));
    }
    let mut futex_waits = st.probes.futex_waits()?;
    st.futex_entries = futex_waits.len();
    // Sleeps of tasks gone without their exit seen (the exit hook deletes the others).
    let stale = st
        .futex_reclaimer
        .due(futex_waits.iter().map(|(tid, _)| *tid), proc_exists);
    if !stale.is_empty() {
        let deleted = st.probes.forget_futex_waits(&stale)?;
        log::debug!("deleted {deleted} futex sleeps of tasks gone from the host");
        futex_waits.retain(|(tid, _)| !stale.contains(tid));
    }
    {
        let AgentState {
            user_lock_time,
            probes,
            scope,
            ..
        } = &mut *st;
        user_lock_time.refresh(probes, |tgid| scope.admits(tgid));
    }
    // Stacks of short-lived processes are named while they live (off the agent's lock would
    // be better; the priming reads only what is new, and a snapshot is rare).
    let user_profile = st.user_profile.clone();
    if !st.scope.is_host() {
        states.retain(|(_, s)| st.scope.admits(s.tgid));
        futex_waits.retain(|(_, w)| st.scope.admits(w.tgid));
    }
    let alerts = st.feed.on_snapshot(&states, &futex_waits, taken, lost);
    st.journal_out();
    if let Some(j) = st.journal.as_mut() {
        j.flush();
    }
    raise_all(&mut st, alerts);
    drop(st);
    user_profile.prime();
    Ok(())
}
