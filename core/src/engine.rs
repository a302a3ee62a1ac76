//! The engine: events in, lock model and waits-for graph kept, alerts out. Deterministic: time
//! is the events' `ts_ns`, the timed detectors run on the events' clock (and at each `snapshot`
//! event), and alerts after a loss are held and vetted here, so replaying what a live source
//! fed the engine reproduces what it decided.

use crate::{
    detect::{vetting::Vetting, Alert, Detector, Thresholds},
    event::{Event, EventKind},
    exposure::Exposure,
    graph::WaitsFor,
    model::Model,
};

/// How often, in trace time, the timed detectors run. Finer than any threshold worth setting,
/// coarse enough that a 10M-event replay spends its time in the model, not in checks.
const CHECK_INTERVAL_NS: u64 = 50_000_000;

pub struct Engine {
    model: Model,
    detector: Detector,
    vetting: Vetting,
    events: u64,
    now_ns: u64,
    next_check_ns: u64,
}

impl Engine {
    pub fn new(thresholds: Thresholds) -> Self {
        Self {
            model: Model::new(),
            detector: Detector::new(thresholds),
            vetting: Vetting::default(),
            events: 0,
            now_ns: 0,
            next_check_ns: 0,
        }
    }

    /// Names addresses in the alerts raised from now on as `exposure` says (raw by default).
    pub fn set_exposure(&mut self, exposure: Exposure) {
        self.detector.exposure = exposure;
    }

    /// Applies one event; returns the alerts it (or the time it advanced to) raised that may be
    /// published now (after a loss, alerts wait for the confirmation: see `detect::vetting`).
    pub fn apply(&mut self, ev: &Event) -> Vec<Alert> {
        self.events += 1;
        // Across CPUs timestamps may step back a little: time never goes backwards.
        self.now_ns = self.now_ns.max(ev.ts_ns);
        let mut alerts = Vec::new();
        // The timed detectors, when due, judge the state as it stood until this moment, before
        // this event changes it: a cycle that lasted past its confirmation until this event
        // broke it is a deadlock (a trace may hold nothing else in between). Not on a
        // correction: a snapshot's conclusions are all in before they are judged, at the
        // `snapshot` event that closes them.
        let due = self.now_ns >= self.next_check_ns && !ev.kind.is_correction();
        if due {
            alerts.extend(self.run_checks());
        }
        if let Some(notice) = self.model.apply(ev) {
            alerts.extend(self.detector.on_notice(&self.model, &notice));
        }
        if matches!(ev.kind, EventKind::Snapshot {}) {
            alerts.extend(self.run_checks());
        }
        self.vetting.vet(&self.model, &ev.kind, alerts)
    }

    /// Runs the timed detectors at the current time (at the end of a trace); returns what may
    /// be published.
    pub fn check(&mut self) -> Vec<Alert> {
        let alerts = self.run_checks();
        self.vetting.hold(alerts)
    }

    fn run_checks(&mut self) -> Vec<Alert> {
        self.next_check_ns = self.now_ns.saturating_add(CHECK_INTERVAL_NS);
        self.detector.check(&self.model, self.now_ns)
    }

    /// Holds `alerts` (raised before a loss was noticed, that may rest on it) like those raised
    /// after it, while the loss is unconfirmed; returns those that may be published.
    pub fn hold(&mut self, alerts: Vec<Alert>) -> Vec<Alert> {
        self.vetting.hold(alerts)
    }

    /// Whether records were lost and no snapshot has confirmed the model since.
    pub fn unconfirmed(&self) -> bool {
        self.vetting.unconfirmed()
    }

    /// Alerts held since a loss, waiting for a confirmation (a trace that ends before one leaves
    /// them here).
    pub fn held(&self) -> &[Alert] {
        self.vetting.held()
    }

    /// Alerts held after a loss and dropped because the confirmation refuted them.
    pub fn dropped(&self) -> u64 {
        self.vetting.dropped()
    }

    pub fn events(&self) -> u64 {
        self.events
    }

    pub fn now_ns(&self) -> u64 {
        self.now_ns
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    pub fn graph(&self) -> WaitsFor {
        WaitsFor::build(&self.model)
    }
}
