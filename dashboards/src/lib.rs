//! faultline's Grafana dashboard and Prometheus alert rules live beside this crate; this code
//! reads them back so tests can check that every query parses and names only metrics the
//! agent exports (the live check is in `tracer/tests/prometheus.rs`).

use std::{collections::BTreeSet, fs, path::PathBuf};

use anyhow::{anyhow, Context as _, Result};
use promql_parser::parser::{self, Expr};

/// The directory holding the dashboards, rules and provisioning files.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn dashboard_path() -> PathBuf {
    root().join("grafana/faultline.json")
}

pub fn rules_path() -> PathBuf {
    root().join("alerts/faultline.rules.yml")
}

pub fn rules_test_path() -> PathBuf {
    root().join("alerts/faultline.rules.test.yml")
}

/// Grafana's built-in interval variables, replaced by what Grafana would put there.
fn expand_grafana_variables(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$__interval", "30s")
        .replace("$__range", "1h")
}

/// Every (panel title, query) of the dashboard, with Grafana variables expanded.
pub fn dashboard_queries() -> Result<Vec<(String, String)>> {
    let path = dashboard_path();
    let text = fs::read_to_string(&path).with_context(|| path.display().to_string())?;
    let doc: serde_json::Value =
        serde_json::from_str(&text).with_context(|| path.display().to_string())?;
    let panels = doc["panels"]
        .as_array()
        .ok_or_else(|| anyhow!("{}: no panels", path.display()))?;
    let mut out = Vec::new();
    for p in panels {
        let title = p["title"].as_str().unwrap_or("?").to_owned();
        for t in p["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = t["expr"].as_str() {
                out.push((title.clone(), expand_grafana_variables(expr)));
            }
        }
    }
    Ok(out)
}

/// Every `expr:` of the alert rules file (the rules keep each expression on one line, so a
/// line scan is exact here; `promtool check rules` validates the YAML itself).
pub fn rule_exprs() -> Result<Vec<(String, String)>> {
    let path = rules_path();
    let text = fs::read_to_string(&path).with_context(|| path.display().to_string())?;
    let mut out = Vec::new();
    let mut alert = String::from("?");
    for line in text.lines() {
        let line = line.trim();
        if let Some(name) = line.strip_prefix("- alert:") {
            alert = name.trim().to_owned();
        } else if let Some(expr) = line.strip_prefix("expr:") {
            out.push((alert.clone(), expr.trim().to_owned()));
        }
    }
    Ok(out)
}

/// The metric names an expression selects (`_bucket`/`_sum`/`_count` included as written).
pub fn metric_names(expr: &str) -> Result<BTreeSet<String>> {
    let ast = parser::parse(expr).map_err(|e| anyhow!("{expr}: {e}"))?;
    let mut names = BTreeSet::new();
    walk(&ast, &mut names);
    Ok(names)
}

fn walk(e: &Expr, names: &mut BTreeSet<String>) {
    match e {
        Expr::Aggregate(a) => {
            walk(&a.expr, names);
            if let Some(p) = &a.param {
                walk(p, names);
            }
        }
        Expr::Unary(u) => walk(&u.expr, names),
        Expr::Binary(b) => {
            walk(&b.lhs, names);
            walk(&b.rhs, names);
        }
        Expr::Paren(p) => walk(&p.expr, names),
        Expr::Subquery(s) => walk(&s.expr, names),
        Expr::VectorSelector(vs) => names.extend(vs.name.clone()),
        Expr::MatrixSelector(ms) => names.extend(ms.vs.name.clone()),
        Expr::Call(c) => c.args.args.iter().for_each(|a| walk(a, names)),
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
    }
}

/// The metric families a scrape (text format) exposes, by family name: `x_bucket`, `x_sum`
/// and `x_count` samples count as family `x` and as themselves.
pub fn scraped_names(exposition: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in exposition.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            if let Some(name) = rest.split_whitespace().next() {
                names.insert(name.to_owned());
            }
        } else if !line.starts_with('#') && !line.is_empty() {
            let name = line.split(['{', ' ']).next().unwrap_or_default();
            names.insert(name.to_owned());
        }
    }
    names
}
