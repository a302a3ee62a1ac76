//! Losses: when the ring buffer drops records, the tasks with state become unknown (a `lost`
//! event) and the engine holds the alerts raised meanwhile; a snapshot taken after every loss
//! confirms the model again (a `confirmed` event), on which the engine publishes the held
//! alerts the corrected model still supports (`core::detect::vetting`).

use super::LiveFeed;
use crate::{
    core::detect::Alert,
    core::event::{Event, EventKind},
};

impl LiveFeed {
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
        let was_unconfirmed = self.engine.unconfirmed();
        // The engine holds what follows until a confirmation (nothing is raised by the loss
        // itself: the timed detectors do not run on it).
        let raised = self.apply(&Event {
            ts_ns: self.engine.now_ns(),
            tid: 0,
            pid: 0,
            comm: None,
            kind: EventKind::Lost { count: new },
        });
        debug_assert!(raised.is_empty(), "a loss is held, never published");
        if !was_unconfirmed {
            log::warn!(
                "{new} events lost (ring buffer full): {} tasks' state unknown until the next snapshot taken after the loss confirms it; alerts held until then",
                self.unknown().len()
            );
        }
        new
    }

    /// Alerts from `on_record`, checked against the lost-record counter read after them (when
    /// it could be read): alerts that may rest on a lost record are held for the next snapshot.
    pub fn vet(&mut self, alerts: Vec<Alert>, lost_total: Option<u64>) -> Vec<Alert> {
        if let Some(total) = lost_total {
            self.note_lost(total);
        }
        // Raised before the loss was noticed, but perhaps on top of it. (A replay of the
        // journal publishes these: there the loss comes after them.)
        self.engine.hold(alerts)
    }

    /// After a loss, the snapshot just applied is the confirmation: held alerts it still
    /// supports are published, the rest are dropped, and no task is unknown any more (a
    /// `confirmed` event), until a record older than a lossy walk says otherwise.
    pub(super) fn confirm(&mut self, taken_ns: u64) -> Vec<Alert> {
        let (held, dropped_before) = (self.engine.held().len(), self.engine.dropped());
        let kept = self.correct(0, 0, taken_ns, EventKind::Confirmed {});
        let dropped = self.engine.dropped() - dropped_before;
        if held > 0 {
            log::info!(
                "snapshot after the loss confirmed {} of {held} held alerts; {dropped} dropped",
                held as u64 - dropped
            );
        }
        kept
    }
}
