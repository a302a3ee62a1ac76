//! Sinks: adapters over the engine's query API. The HTTP API (`http`), Prometheus exposition
//! (`metrics`), and alerts with their incident files (`alerts`). Adding one touches nothing in
//! the core.

pub mod alerts;
pub mod http;
pub mod metrics;
