//! Sinks: adapters over finished views. The HTTP API (`http`, also served on a Unix socket by
//! `unix_api`) over what the agent hands out
//! (`agent_view`), Prometheus exposition (`metrics`), alerts with their incident files
//! (`alerts`), the lock-contention profile as pprof (`pprof`), trace files of events (`trace_file`: `record`, `agent --record`), and pictures:
//! the live page, SVG graphs and HTML reports (`report`). `web` serves the HTTP API: TLS, basic
//! auth, timeouts, the connection cap and the Host check (`--web.config.file`); what the API
//! renders at once is bounded (`render_gate`). Adding one touches nothing in the core; no sink
//! reads the kernel, /proc or the agent's lock.

pub mod agent_view;
pub mod alerts;
pub mod http;
pub mod metrics;
pub mod pprof;
pub mod render_gate;
pub mod report;
pub mod trace_file;
pub mod unix_api;
pub mod web;
