//! Words and marks every picture shares: escaping for HTML and SVG, short durations, and the
//! wait-time classes boxes are coloured by. Its own module so that `html` and `svg` both use it
//! without using each other.

/// "1.25s", "340ms", "2m 5s": short, for labels.
pub fn short_duration(ns: u64) -> String {
    let ms = ns / 1_000_000;
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.2}s", ns as f64 / 1e9)
    } else {
        format!("{}m {}s", ms / 60_000, (ms % 60_000) / 1000)
    }
}

/// Text for HTML and SVG, in element content and in quoted attributes alike.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            // Control characters (a comm can hold them) would make the document invalid XML.
            c if c.is_control() && c != '\n' && c != '\t' => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

/// The wait-time classes blocked boxes are coloured by, with their upper bounds.
pub const WAIT_CLASSES: [(&str, u64, &str); 4] = [
    ("w0", 100_000_000, "< 100ms"),
    ("w1", 1_000_000_000, "< 1s"),
    ("w2", 10_000_000_000, "< 10s"),
    ("w3", u64::MAX, "≥ 10s"),
];

pub fn wait_class(ns: u64) -> &'static str {
    WAIT_CLASSES
        .iter()
        .find(|(_, upto, _)| ns < *upto)
        .map(|(c, _, _)| *c)
        .unwrap_or("w3")
}
