//! Alerts after a loss. Once the source has dropped records (a `lost` event), an alert may rest
//! on what was lost: it is held until a snapshot confirms the model (a `confirmed` event), then
//! published if the corrected model still supports it, and dropped if not. In the engine, so
//! a replay of what a live source fed it holds and drops what the live agent did.

use super::{Alert, AlertKind};
use crate::{
    event::{EventKind, LockMode},
    model::{Blocked, Model},
};

/// The alerts held since a loss, and what the confirmations dropped.
#[derive(Debug, Default)]
pub struct Vetting {
    /// A loss was seen and no `confirmed` has followed it.
    unconfirmed: bool,
    held: Vec<Alert>,
    /// Alerts a confirmation found the model no longer supports.
    dropped: u64,
}

impl Vetting {
    /// The alerts that `kind` (just applied to `model`) and the detectors' run after it raised,
    /// as far as they may be published now.
    pub fn vet(&mut self, model: &Model, kind: &EventKind, alerts: Vec<Alert>) -> Vec<Alert> {
        match kind {
            EventKind::Lost { .. } => {
                self.unconfirmed = true;
                self.hold(alerts)
            }
            EventKind::Confirmed {} => {
                let mut out = self.confirm(model);
                out.extend(alerts);
                out
            }
            _ => self.hold(alerts),
        }
    }

    /// Holds `alerts` while a loss is unconfirmed; returns those that may be published.
    pub fn hold(&mut self, alerts: Vec<Alert>) -> Vec<Alert> {
        if self.unconfirmed {
            self.held.extend(alerts);
            Vec::new()
        } else {
            alerts
        }
    }

    /// The model was confirmed: held alerts it still supports are published, the rest dropped.
    fn confirm(&mut self, model: &Model) -> Vec<Alert> {
        self.unconfirmed = false;
        let held = std::mem::take(&mut self.held);
        let total = held.len();
        let kept: Vec<Alert> = held.into_iter().filter(|a| still_true(model, a)).collect();
        self.dropped += (total - kept.len()) as u64;
        kept
    }

    /// Whether a loss is still unconfirmed.
    pub fn unconfirmed(&self) -> bool {
        self.unconfirmed
    }

    /// Alerts held now, waiting for a confirmation.
    pub fn held(&self) -> &[Alert] {
        &self.held
    }

    /// Alerts dropped because the confirmation after a loss refuted them.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

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

#[cfg(test)]
mod tests {
    use crate::{
        detect::{AlertKind, Thresholds},
        engine::Engine,
        event::{Addr, Event, EventKind, LockMode},
    };

    const MS: u64 = 1_000_000;
    const MM: Addr = Addr(0xffff_8880_0000_1000);

    fn ev(ms: u64, tid: u32, kind: EventKind) -> Event {
        Event {
            ts_ns: ms * MS,
            tid,
            pid: tid,
            comm: None,
            kind,
        }
    }

    /// A writer that starts waiting at 0 ms and never gets the lock: a stall past 1 s.
    fn waiting_writer() -> Engine {
        let mut e = Engine::new(Thresholds::default());
        let start = ev(
            0,
            31,
            EventKind::MmapLockStart {
                mm: MM,
                mode: LockMode::Write,
                mm_pid: None,
            },
        );
        assert!(e.apply(&start).is_empty());
        e
    }

    fn stalls(alerts: &[crate::detect::Alert]) -> usize {
        alerts.iter().filter(|a| a.kind == AlertKind::Stall).count()
    }

    #[test]
    fn the_timed_detectors_run_at_a_snapshot_event_not_at_other_corrections() {
        let mut e = waiting_writer();
        let correction = ev(
            1_500,
            0,
            EventKind::ReadHoldersInferred {
                mm: MM,
                readers: Vec::new(),
            },
        );
        assert_eq!(stalls(&e.apply(&correction)), 0);
        assert_eq!(stalls(&e.apply(&ev(1_500, 0, EventKind::Snapshot {}))), 1);
    }

    #[test]
    fn after_a_loss_an_alert_is_held_until_confirmed_then_published_if_still_true() {
        let mut e = waiting_writer();
        assert!(e.apply(&ev(10, 0, EventKind::Lost { count: 3 })).is_empty());
        assert!(e.apply(&ev(1_500, 0, EventKind::Snapshot {})).is_empty());
        assert_eq!(stalls(e.held()), 1, "held while unconfirmed");
        let published = e.apply(&ev(1_600, 0, EventKind::Confirmed {}));
        assert_eq!(stalls(&published), 1, "the writer still waits: published");
        assert!(e.held().is_empty() && !e.unconfirmed());
        assert_eq!(e.dropped(), 0);
    }

    #[test]
    fn after_a_loss_an_alert_the_confirmation_refutes_is_dropped_and_counted() {
        let mut e = waiting_writer();
        e.apply(&ev(10, 0, EventKind::Lost { count: 3 }));
        e.apply(&ev(1_500, 0, EventKind::Snapshot {}));
        // The snapshot shows the wait over: its end record was among the lost ones.
        e.apply(&ev(1_600, 31, EventKind::WaitEnded {}));
        assert!(e.apply(&ev(1_600, 0, EventKind::Confirmed {})).is_empty());
        assert_eq!(e.dropped(), 1);
        assert!(e.held().is_empty());
    }
}
