//! Sinks: adapters over finished views. The HTTP API (`http`) over what the agent hands out
//! (`agent_view`), Prometheus exposition (`metrics`), alerts with their incident files
//! (`alerts`), and pictures: the live page, SVG graphs and HTML reports (`report`); what the API
//! renders at once is bounded (`render_gate`). Adding one touches nothing in the core; no sink
//! reads the kernel, /proc or the agent's lock.

pub mod agent_view;
pub mod alerts;
pub mod http;
pub mod metrics;
pub mod render_gate;
pub mod report;
