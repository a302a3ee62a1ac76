//! Sinks: adapters over the engine's query API. The HTTP API (`http`), Prometheus exposition
//! (`metrics`), alerts with their incident files (`alerts`), and pictures: the live page, SVG
//! graphs and HTML reports (`report`). Adding one touches nothing in
//! the core.

pub mod alerts;
pub mod http;
pub mod metrics;
pub mod report;
