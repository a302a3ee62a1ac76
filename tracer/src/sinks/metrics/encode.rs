//! Building blocks of a Prometheus family: label pairs, counters, gauges, and histograms made
//! from the kernel's log2 buckets.

use prometheus::proto::{
    Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType,
};

use super::Log2Buckets;

/// Lowest and highest log2 bucket exported: le = 2^(b+1) ns, so 1.02 µs .. 68.7 s. Faster
/// observations land in the first bucket; slower ones count in +Inf only.
const FIRST_BUCKET: usize = 9;
const LAST_BUCKET: usize = 35;

fn labels(pairs: &[(&str, &str)]) -> Vec<LabelPair> {
    pairs
        .iter()
        .map(|(k, v)| {
            let mut l = LabelPair::default();
            l.set_name((*k).to_owned());
            l.set_value((*v).to_owned());
            l
        })
        .collect()
}

pub(super) fn family(
    name: &str,
    help: &str,
    kind: MetricType,
    metrics: Vec<Metric>,
) -> MetricFamily {
    let mut f = MetricFamily::default();
    f.set_name(name.to_owned());
    f.set_help(help.to_owned());
    f.set_field_type(kind);
    f.set_metric(metrics);
    f
}

pub(super) fn counter(pairs: &[(&str, &str)], v: u64) -> Metric {
    counter_f64(pairs, v as f64)
}

/// A counter whose value is not a count (seconds).
pub(super) fn counter_f64(pairs: &[(&str, &str)], v: f64) -> Metric {
    let mut c = Counter::default();
    c.set_value(v);
    let mut m = Metric::from_label(labels(pairs));
    m.set_counter(c);
    m
}

pub(super) fn gauge(pairs: &[(&str, &str)], v: f64) -> Metric {
    let mut g = Gauge::default();
    g.set_value(v);
    let mut m = Metric::from_label(labels(pairs));
    m.set_gauge(g);
    m
}

/// Cumulative `le` buckets (seconds) from log2 nanosecond buckets. The sum is estimated at each
/// bucket's midpoint (1.5 × its lower bound): the kernel keeps counts, not sums.
pub(super) fn histogram(pairs: &[(&str, &str)], h: &Log2Buckets) -> Metric {
    let mut buckets = Vec::with_capacity(LAST_BUCKET - FIRST_BUCKET + 1);
    let mut cumulative = 0u64;
    let mut sum = 0f64;
    for (b, n) in h.iter().enumerate() {
        sum += *n as f64 * 1.5 * (1u64 << b.min(62)) as f64 / 1e9;
        if b <= LAST_BUCKET {
            cumulative += n;
        }
        if (FIRST_BUCKET..=LAST_BUCKET).contains(&b) {
            let mut bucket = Bucket::default();
            bucket.set_upper_bound((1u64 << (b + 1)) as f64 / 1e9);
            bucket.set_cumulative_count(cumulative);
            buckets.push(bucket);
        }
    }
    let mut hist = Histogram::default();
    hist.set_bucket(buckets);
    hist.set_sample_count(h.iter().sum());
    hist.set_sample_sum(sum);
    let mut m = Metric::from_label(labels(pairs));
    m.set_histogram(hist);
    m
}

/// One family of unlabelled counters per (name, help, value).
pub(super) fn plain_counters(list: &[(&str, &str, u64)]) -> Vec<MetricFamily> {
    list.iter()
        .map(|(name, help, v)| family(name, help, MetricType::COUNTER, vec![counter(&[], *v)]))
        .collect()
}
