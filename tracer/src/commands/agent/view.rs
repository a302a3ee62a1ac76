//! The views the agent hands its HTTP sinks (`sinks::agent_view`): each copied out under the
//! lock, with file reads (/proc names, workloads) done after it is released where possible.

use std::sync::{Arc, Mutex};

use crate::{
    core::{detect::Alert, exposure::Exposure, lock_profile::Profile, views::GraphView},
    sinks::{
        agent_view::{AgentView, AlertsDoc, PageView},
        metrics::MetricsInput,
    },
};

use super::{
    metrics_input::metrics_input,
    state::{engine_view, engine_view_as, lock, AgentState},
};

/// The agent as its Unix socket serves it: the same views, but the graph with raw addresses.
/// Only root and the agent's own user can reach that socket (0600 in a 0700 directory), who can
/// read the kernel's addresses anyway; `faultline diagnose` needs them to match the agent's
/// userfaultfd contexts with the ones it reads from the kernel. (Alert texts keep the ids they
/// were written with.)
pub struct LocalAgent(pub Arc<Mutex<AgentState>>);

impl AgentView for LocalAgent {
    fn graph(&self) -> GraphView {
        let view = engine_view_as(&lock(&self.0), &Exposure::Raw);
        view.resolve()
    }

    fn page(&self, recent: usize) -> PageView {
        self.0.page(recent)
    }

    fn alerts(&self) -> AlertsDoc {
        self.0.alerts()
    }

    fn metrics(&self) -> Result<MetricsInput, String> {
        self.0.metrics()
    }

    fn lock_profile(&self) -> Result<Profile, String> {
        self.0.lock_profile()
    }

    fn user_lock_profile(&self) -> Result<crate::core::user_profile::UserProfile, String> {
        self.0.user_lock_profile()
    }
}

impl AgentView for Mutex<AgentState> {
    fn graph(&self) -> GraphView {
        let view = engine_view(&lock(self));
        view.resolve()
    }

    fn page(&self, recent: usize) -> PageView {
        let st = lock(self);
        let engine = st.feed.engine();
        let kept: Vec<&Alert> = st.sink.recent().map(|r| &r.alert).collect();
        let skip = kept.len().saturating_sub(recent);
        PageView {
            view: GraphView::build(
                engine.model(),
                &engine.graph(),
                engine.now_ns(),
                &st.exposure,
            ),
            alerts: kept.into_iter().skip(skip).cloned().collect(),
            events: engine.events(),
        }
    }

    fn alerts(&self) -> AlertsDoc {
        let st = lock(self);
        AlertsDoc {
            events: st.feed.engine().events(),
            alerts: st.sink.recent().cloned().collect(),
        }
    }

    fn metrics(&self) -> Result<MetricsInput, String> {
        metrics_input(self)
    }

    fn lock_profile(&self) -> Result<Profile, String> {
        // Only the handle is taken under the lock; the maps are read after it.
        let source = lock(self).lock_profile.clone();
        source.read()
    }

    fn user_lock_profile(&self) -> Result<crate::core::user_profile::UserProfile, String> {
        let source = lock(self).user_profile.clone();
        source.read()
    }
}
