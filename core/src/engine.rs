//! The engine: events in, lock model and waits-for graph kept, alerts out. Deterministic: time
//! is the events' `ts_ns`, so replaying a recording reproduces the live run.

use crate::{
    detect::{Alert, Detector, Thresholds},
    event::Event,
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
    events: u64,
    now_ns: u64,
    next_check_ns: u64,
}

impl Engine {
    pub fn new(thresholds: Thresholds) -> Self {
        Self {
            model: Model::new(),
            detector: Detector::new(thresholds),
            events: 0,
            now_ns: 0,
            next_check_ns: 0,
        }
    }

    /// Names addresses in the alerts raised from now on as `exposure` says (raw by default).
    pub fn set_exposure(&mut self, exposure: Exposure) {
        self.detector.exposure = exposure;
    }

    /// Applies one event; returns the alerts it (or the time it advanced to) raised.
    pub fn apply(&mut self, ev: &Event) -> Vec<Alert> {
        self.events += 1;
        // Across CPUs timestamps may step back a little: time never goes backwards.
        self.now_ns = self.now_ns.max(ev.ts_ns);
        let mut alerts = Vec::new();
        if let Some(notice) = self.model.apply(ev) {
            alerts.extend(self.detector.on_notice(&self.model, &notice));
        }
        if self.now_ns >= self.next_check_ns && !ev.kind.is_correction() {
            alerts.extend(self.check());
        }
        alerts
    }

    /// Runs the timed detectors at the current time (also at the end of a trace).
    pub fn check(&mut self) -> Vec<Alert> {
        self.next_check_ns = self.now_ns.saturating_add(CHECK_INTERVAL_NS);
        self.detector.check(&self.model, self.now_ns)
    }

    /// Moves time forward without an event (live: the wall clock says nobody moved).
    pub fn advance_to(&mut self, ts_ns: u64) -> Vec<Alert> {
        self.now_ns = self.now_ns.max(ts_ns);
        self.check()
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
