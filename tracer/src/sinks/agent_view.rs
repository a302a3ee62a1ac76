//! What the agent lets its HTTP sinks read: finished views, each copied out under the agent's
//! lock by the agent itself. The sinks never see the probes, /proc or the lock.

use std::sync::Arc;

use serde::Serialize;

use crate::{
    core::{detect::Alert, lock_profile::Profile, views::GraphView},
    sinks::{alerts::RaisedAlert, metrics::MetricsInput},
};

/// The agent, as its HTTP API and live page read it.
pub trait AgentView: Send + Sync + 'static {
    /// The live graph: tasks a loss left unknown marked, every process named and attributed
    /// to its workload (`/api/graph`).
    fn graph(&self) -> GraphView;
    /// The engine's graph as it stands, the newest `recent` alerts and the events seen, taken
    /// at one moment (the live page).
    fn page(&self, recent: usize) -> PageView;
    /// The alerts kept and the events seen (`/api/alerts`).
    fn alerts(&self) -> AlertsDoc;
    /// Everything a scrape shows, or why the probes' maps could not be read.
    fn metrics(&self) -> Result<MetricsInput, String>;
    /// The kernel lock-contention profile since the agent started
    /// (`/debug/pprof/kernel_lock`), or why its maps could not be read.
    fn lock_profile(&self) -> Result<Profile, String>;
    /// The user-lock profile since the agent started (`/debug/pprof/user_lock`).
    fn user_lock_profile(&self) -> Result<crate::core::user_profile::UserProfile, String>;
}

/// How handlers hold the agent.
pub type Agent = Arc<dyn AgentView>;

/// `/api/alerts`: the same document `faultline replay --json` prints.
#[derive(Serialize)]
pub struct AlertsDoc {
    pub events: u64,
    pub alerts: Vec<RaisedAlert>,
}

/// What the live page draws (rendering happens outside the agent's lock).
pub struct PageView {
    pub view: GraphView,
    /// Oldest first.
    pub alerts: Vec<Alert>,
    pub events: u64,
}
