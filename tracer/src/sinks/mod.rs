//! Sinks: adapters over finished views. The HTTP API (`http`, also served on a Unix socket by `unix_api`) over what the agent hands out
//! (`agent_view`), Prometheus exposition (`metrics`), alerts with their incident files
//! (`alerts`), and pictures: the live page, SVG graphs and HTML reports (`report`). Adding one
//! touches nothing in the core; no sink reads the kernel, /proc or the agent's lock.

pub mod agent_view;
pub mod alerts;
pub mod http;
pub mod metrics;
pub mod report;
pub mod unix_api;
