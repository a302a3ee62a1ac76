//! Losses: when the ring buffer drops records, the tasks with state become unknown (a `lost`
//! event), alerts raised meanwhile are held, and each snapshot vets them; a snapshot taken
//! after every loss confirms the model again (a `confirmed` event).

use super::LiveFeed;
use crate::{
    core::detect::{Alert, AlertKind},
    core::event::{Event, EventKind, LockMode},
    core::model::{Blocked, Model},
};

/// Whether an alert raised before a loss still describes the model after a snapshot corrected it.
fn still_true(model: &Model, a: &Alert) -> bool {
    let blocked_since = |tid: u32| {
        model
            .task(tid)
            .and_then(|t| t.blocked.as_ref())
            .map(Blocked::since_ns)
    };
    let Some(&subject) = a.tids.first() else {
        return false;
    };
    match a.kind {
        AlertKind::Deadlock => a.tids.iter().all(|&t| blocked_since(t).is_some()),
        // The read hold the second request came on top of, still there: one taken after the
        // alert is another hold, and does not confirm it.
        AlertKind::RecursiveRead => model.task(subject).is_some_and(|t| {
            t.holds
                .values()
                .any(|h| h.mode == LockMode::Read && h.since_ns < a.ts_ns)
        }),
        AlertKind::Stall | AlertKind::UffdStall | AlertKind::RwrInversion => {
            blocked_since(subject).is_some_and(|s| s <= a.ts_ns)
        }
    }
}

impl LiveFeed {
    pub(super) fn hold_if_unconfirmed(&mut self, alerts: Vec<Alert>) -> Vec<Alert> {
        if self.unconfirmed {
            self.held.extend(alerts);
            Vec::new()
        } else {
            alerts
        }
    }

    /// Notes the kernel's lost-record counter. New losses make every task with state unknown
    /// until the next snapshot; returns how many records were newly lost.
    pub fn note_lost(&mut self, lost_total: u64) -> u64 {
        // A counter that went backwards (the programs were reloaded) starts a new count.
        let new = lost_total.saturating_sub(self.lost_seen);
        self.lost_seen = lost_total;
        if new == 0 {
            return 0;
        }
        self.lost += new;
        // The loss is an event like any other change to the model: a replay of a recording
        // that carries it marks the same tasks unknown.
        // Stamped with the feed's own time (that of the records), not the clock: a loss does
        // not move time forward.
        let raised = self.engine.apply(&Event {
            ts_ns: self.engine.now_ns(),
            tid: 0,
            pid: 0,
            comm: None,
            kind: EventKind::Lost { count: new },
        });
        // Alerts the timed detectors raised on the way rest on the loss too: held.
        self.held.extend(raised);
        if !self.unconfirmed {
            log::warn!(
                "{new} events lost (ring buffer full): {} tasks' state unknown until the next snapshot taken after the loss confirms it; alerts held until then",
                self.unknown().len()
            );
        }
        self.unconfirmed = true;
        new
    }

    /// Alerts from `on_record`, checked against the lost-record counter read after them (when
    /// it could be read): alerts that may rest on a lost record are held for the next snapshot.
    pub fn vet(&mut self, alerts: Vec<Alert>, lost_total: Option<u64>) -> Vec<Alert> {
        if let Some(total) = lost_total {
            self.note_lost(total);
        }
        self.hold_if_unconfirmed(alerts)
    }

    /// After a loss, the snapshot just applied is the confirmation: held alerts it still
    /// supports are published, the rest are dropped, and no task is unknown any more (a
    /// `confirmed` event), until a record older than a lossy walk says otherwise.
    pub(super) fn confirm_held(&mut self, alerts: &mut Vec<Alert>) {
        let held = std::mem::take(&mut self.held);
        let total = held.len();
        let model = self.engine.model();
        let kept: Vec<Alert> = held.into_iter().filter(|a| still_true(model, a)).collect();
        let dropped = total - kept.len();
        self.suppressed += dropped as u64;
        if total > 0 {
            log::info!(
                "snapshot after the loss confirmed {} of {total} held alerts; {dropped} dropped",
                kept.len()
            );
        }
        alerts.splice(0..0, kept);
        let now = self.last_snapshot_ns.unwrap_or(0);
        alerts.extend(self.correct(0, 0, now, EventKind::Confirmed {}));
        self.unconfirmed = false;
    }
}
