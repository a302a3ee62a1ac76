//! What the engine holds now: blocked tasks by what they wait on, and alerts raised.

use prometheus::proto::{MetricFamily, MetricType};

use super::{
    encode::{counter, family, gauge},
    MetricsInput,
};

pub(super) fn families(m: &MetricsInput) -> Vec<MetricFamily> {
    vec![
        family(
            "faultline_blocked_tasks",
            "Tasks the waits-for graph shows blocked now, by what they wait on.",
            MetricType::GAUGE,
            m.blocked
                .iter()
                .map(|(wait, n)| gauge(&[("wait", wait)], *n as f64))
                .collect(),
        ),
        family(
            "faultline_alerts_total",
            "Alerts raised, by kind and confidence (probable: resting on an inferred edge or a task of unknown state).",
            MetricType::COUNTER,
            m.alerts
                .iter()
                .map(|((k, c), n)| counter(&[("kind", k.as_str()), ("confidence", c.as_str())], *n))
                .collect(),
        ),
        family(
            "faultline_tasks_state_unknown",
            "Tasks whose state may rest on lost events, until the next snapshot confirms it.",
            MetricType::GAUGE,
            vec![gauge(&[], m.tasks_state_unknown as f64)],
        ),
        family(
            "faultline_alerts_refuted_total",
            "Alerts held after lost events and dropped because the next snapshot refuted them.",
            MetricType::COUNTER,
            vec![counter(&[], m.alerts_refuted)],
        ),
        family(
            "faultline_model_entries",
            "Entries of the agent's live model (reclaimed as processes exit).",
            MetricType::GAUGE,
            m.model_entries
                .iter()
                .map(|(kind, n)| gauge(&[("kind", kind)], *n as f64))
                .collect(),
        ),
    ]
}
