//! The views the agent hands its HTTP sinks (`sinks::agent_view`): each copied out under the
//! lock, with file reads (/proc names, workloads) done after it is released where possible.

use std::sync::Mutex;

use crate::{
    core::{detect::Alert, views::GraphView},
    sinks::{
        agent_view::{AgentView, AlertsDoc, PageView},
        metrics::MetricsInput,
    },
};

use super::{
    metrics_input::metrics_input,
    state::{engine_view, lock, AgentState},
};

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
}
