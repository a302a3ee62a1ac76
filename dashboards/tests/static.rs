//! The dashboard and the alert rules, checked without a live agent: every query parses, the
//! dashboard is portable (datasource variable, $__rate_interval), and promtool accepts the rules
//! and passes their unit tests. The live half (every metric exists in a real scrape, a real
//! Prometheus sees the histograms move) is tracer/tests/prometheus.rs.

use std::process::Command;

use faultline_dashboards::{
    dashboard_path, dashboard_queries, metric_names, root, rule_exprs, rules_path, rules_test_path,
};

#[test]
fn every_dashboard_query_parses_and_names_faultline_metrics() {
    let queries = dashboard_queries().expect("read the dashboard");
    assert!(
        queries.len() >= 20,
        "a panel for each metric family: {}",
        queries.len()
    );
    for (panel, expr) in queries {
        let names = metric_names(&expr).unwrap_or_else(|e| panic!("panel {panel:?}: {e}"));
        assert!(
            !names.is_empty(),
            "panel {panel:?} selects no metric: {expr}"
        );
        for n in names {
            assert!(n.starts_with("faultline_"), "panel {panel:?} names {n}");
        }
    }
}

#[test]
fn the_dashboard_is_portable_across_prometheus_datasources() {
    let text = std::fs::read_to_string(dashboard_path()).expect("dashboard");
    let doc: serde_json::Value = serde_json::from_str(&text).expect("dashboard JSON");
    let vars = doc["templating"]["list"].as_array().expect("templating");
    assert!(
        vars.iter()
            .any(|v| v["type"] == "datasource" && v["name"] == "datasource"),
        "a datasource variable"
    );
    for p in doc["panels"].as_array().expect("panels") {
        assert_eq!(
            p["datasource"]["uid"], "${datasource}",
            "panel {}",
            p["title"]
        );
        for t in p["targets"].as_array().expect("targets") {
            let expr = t["expr"].as_str().expect("expr");
            // Every range in a rate/increase uses Grafana's scrape-aware interval, or, in an
            // instant query ("over the time range"), the dashboard's range.
            let instant = t["instant"] == true;
            for (i, _) in expr.match_indices('[') {
                assert!(
                    expr[i..].starts_with("[$__rate_interval]")
                        || (instant && expr[i..].starts_with("[$__range]")),
                    "panel {}: ranges use $__rate_interval ($__range in instant queries): {expr}",
                    p["title"]
                );
            }
        }
    }
}

#[test]
fn every_rule_expression_parses() {
    let rules = rule_exprs().expect("rules");
    assert!(rules.len() >= 5, "{rules:?}");
    for (alert, expr) in rules {
        metric_names(&expr).unwrap_or_else(|e| panic!("{alert}: {e}"));
    }
}

fn promtool() -> Option<&'static str> {
    if Command::new("promtool").arg("--version").output().is_ok() {
        return Some("promtool");
    }
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("promtool is missing: `cargo xtask setup` installs Debian's prometheus package");
    }
    eprintln!("skipping: promtool not installed (run `cargo xtask setup`)");
    None
}

#[test]
fn promtool_checks_the_rules_and_passes_their_unit_tests() {
    let Some(promtool) = promtool() else { return };
    let check = Command::new(promtool)
        .args(["check", "rules"])
        .arg(rules_path())
        .output()
        .expect("promtool check rules");
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    let test = Command::new(promtool)
        .args(["test", "rules"])
        .arg(rules_test_path())
        .current_dir(root().join("alerts"))
        .output()
        .expect("promtool test rules");
    assert!(
        test.status.success(),
        "{}{}",
        String::from_utf8_lossy(&test.stdout),
        String::from_utf8_lossy(&test.stderr)
    );
}
