//! The Kubernetes manifests and the Containerfile, checked offline: the manifests against the
//! Kubernetes schemas (PyPI's kubernetes-validate, installed by `cargo xtask setup`, strict mode),
//! the DaemonSet's privileges and mounts against what faultline needs and no more, the shipped
//! config against faultline's own parser. (No container engine here: the image is not built.)

use std::{path::PathBuf, process::Command};

fn repo() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

fn manifest() -> PathBuf {
    repo().join("deploy/kubernetes/faultline.yaml")
}

fn validate(path: &std::path::Path) -> std::process::Output {
    Command::new("kubernetes-validate")
        .args(["--strict", "--kubernetes-version", "1.37.0"])
        .arg(path)
        .output()
        .expect("kubernetes-validate (PyPI; installed by `cargo xtask setup`)")
}

/// Every document of a YAML file, as JSON (PyYAML comes with kubernetes-validate).
fn documents(path: &std::path::Path) -> Vec<serde_json::Value> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps([d for d in yaml.safe_load_all(open(sys.argv[1])) if d]))",
        ])
        .arg(path)
        .output()
        .expect("python3 with PyYAML");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("YAML as JSON")
}

fn of_kind<'a>(docs: &'a [serde_json::Value], kind: &str) -> &'a serde_json::Value {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in the manifest"))
}

#[test]
fn the_manifests_pass_strict_validation_against_the_kubernetes_schemas() {
    let out = validate(&manifest());
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    for kind in [
        "daemonset",
        "service",
        "configmap",
        "serviceaccount",
        "networkpolicy",
    ] {
        assert!(
            text.contains(&format!("passed for resource {kind}/faultline")),
            "{kind} validated: {text}"
        );
    }
}

#[test]
fn strict_validation_refuses_a_misspelt_field() {
    // The validator must be able to fail: the same manifest with one field misspelt.
    let text = std::fs::read_to_string(manifest()).expect("manifest");
    assert!(text.contains("hostPID: true"));
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, text.replace("hostPID: true", "hostPid: true")).expect("write");
    let out = validate(&bad);
    assert!(
        !out.status.success(),
        "a misspelt field passed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn the_daemonset_has_the_least_privilege_that_works() {
    let docs = documents(&manifest());
    let ds = of_kind(&docs, "DaemonSet");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostPID"], true, "the node's processes");
    assert_ne!(pod["hostNetwork"], true, "no host network needed");
    let c = &pod["containers"][0];
    let sc = &c["securityContext"];
    assert_eq!(sc["privileged"], false);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert_eq!(
        sc["capabilities"]["add"],
        serde_json::json!(["BPF", "PERFMON", "SYS_RESOURCE"])
    );
    let mounts = c["volumeMounts"].as_array().expect("mounts");
    for (path, host) in [
        ("/sys/kernel/btf", "/sys/kernel/btf"),
        ("/sys/kernel/tracing", "/sys/kernel/tracing"),
        // The host's cgroup2 tree and the kubelet's log directories, so that cgroup ids resolve
        // to pods and pods to namespace/pod/container inside the private cgroup namespace.
        ("/host/sys/fs/cgroup", "/sys/fs/cgroup"),
        ("/host/var/log/pods", "/var/log/pods"),
        ("/host/var/log/containers", "/var/log/containers"),
    ] {
        let m = mounts
            .iter()
            .find(|m| m["mountPath"] == path)
            .unwrap_or_else(|| panic!("{path} mounted"));
        assert_eq!(m["readOnly"], true, "{path} read-only");
        let vol = pod["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .find(|v| v["name"] == m["name"])
            .expect("the mount's volume");
        assert_eq!(vol["hostPath"]["path"], host);
    }
    // The agent is told where those are mounted.
    let env = |name: &str| {
        c["env"]
            .as_array()
            .expect("env")
            .iter()
            .find(|e| e["name"] == name)
            .and_then(|e| e["value"].as_str())
            .unwrap_or_else(|| panic!("{name} set"))
            .to_owned()
    };
    assert_eq!(env("FAULTLINE_CGROUP_ROOT"), "/host/sys/fs/cgroup");
    assert_eq!(env("FAULTLINE_PODS_LOG_DIR"), "/host/var/log/pods");
    assert_eq!(
        env("FAULTLINE_CONTAINERS_LOG_DIR"),
        "/host/var/log/containers"
    );
    // Scraping: the annotations, the container port and the config's listen address agree.
    let ann = &ds["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(ann["prometheus.io/scrape"], "true");
    let port = c["ports"][0]["containerPort"].as_u64().expect("port");
    assert_eq!(ann["prometheus.io/port"], port.to_string());
    let cm = of_kind(&docs, "ConfigMap");
    let config = cm["data"]["faultline.toml"].as_str().expect("config");
    let pairs = tracer::config::parse("configmap", config)
        .unwrap_or_else(|e| panic!("the shipped config is valid: {e}"));
    assert!(
        pairs.contains(&("FAULTLINE_LISTEN", format!("0.0.0.0:{port}"))),
        "{pairs:?}"
    );
    let svc = of_kind(&docs, "Service");
    assert_eq!(svc["spec"]["ports"][0]["name"], c["ports"][0]["name"]);
}

#[test]
fn the_daemonset_listens_beyond_loopback_only_with_tls_and_users_from_a_secret() {
    let docs = documents(&manifest());
    let pod = &of_kind(&docs, "DaemonSet")["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    let config = of_kind(&docs, "ConfigMap")["data"]["faultline.toml"]
        .as_str()
        .expect("config");
    let pairs = tracer::config::parse("configmap", config).expect("valid config");
    let web = pairs
        .iter()
        .find(|(k, _)| *k == "FAULTLINE_WEB_CONFIG_FILE")
        .map(|(_, v)| std::path::PathBuf::from(v))
        .expect("the shipped config sets web_config_file");
    // The web config and what it names come from a Secret mounted read-only.
    let mount = c["volumeMounts"]
        .as_array()
        .expect("mounts")
        .iter()
        .find(|m| web.starts_with(m["mountPath"].as_str().unwrap_or("-")) && m["name"] != "config")
        .expect("the web config's directory is mounted");
    assert_eq!(mount["readOnly"], true);
    let vol = pod["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find(|v| v["name"] == mount["name"])
        .expect("its volume");
    assert_eq!(vol["secret"]["secretName"], "faultline-web", "{vol}");
    // The probes speak TLS to /healthz, which needs no credentials.
    assert_eq!(c["readinessProbe"]["httpGet"]["scheme"], "HTTPS");
    assert_eq!(c["livenessProbe"]["httpGet"]["scheme"], "HTTPS");
    // The example web.yml for the Secret: TLS with the mounted files, and users, refused until
    // its placeholder is a real hash.
    let path = repo().join("deploy/kubernetes/web.yml");
    let text = std::fs::read_to_string(&path).expect("web.yml");
    let e = tracer::sinks::web::config::parse(&path, &text).expect_err("placeholder hash");
    assert!(e.to_string().contains("basic_auth_users.prometheus"), "{e}");
    let filled = text.replace(
        "REPLACE-ME",
        "'$2y$04$vNiO0U.AOG7nMdr9b4kyTuahbLg4aVmKqmCGqDCFGtJ2hZ8hy5zCq'",
    );
    let settings = tracer::sinks::web::config::parse(&path, &filled).expect("filled in");
    let tls = settings.tls.expect("TLS");
    assert!(tls
        .cert_file
        .starts_with(mount["mountPath"].as_str().expect("path")));
    assert!(tls
        .key_file
        .starts_with(mount["mountPath"].as_str().expect("path")));
    assert_eq!(settings.users.len(), 1);
}

#[test]
fn the_service_monitor_selects_the_agents_service_and_port() {
    let docs = documents(&manifest());
    let svc = of_kind(&docs, "Service");
    let sm = documents(&repo().join("deploy/kubernetes/servicemonitor.yaml"));
    let sm = of_kind(&sm, "ServiceMonitor");
    assert_eq!(sm["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(
        sm["spec"]["selector"]["matchLabels"],
        svc["metadata"]["labels"]
    );
    assert_eq!(
        sm["spec"]["endpoints"][0]["port"],
        svc["spec"]["ports"][0]["name"]
    );
    assert_eq!(sm["spec"]["endpoints"][0]["path"], "/metrics");
}

#[test]
fn the_containerfile_copies_what_exists_and_runs_the_agent() {
    let text = std::fs::read_to_string(repo().join("Containerfile")).expect("Containerfile");
    assert!(text.contains(" AS build"), "multi-stage");
    assert!(text.contains("cargo xtask setup"), "the eBPF toolchain");
    for line in text
        .lines()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from"))
    {
        let src = line.split_whitespace().nth(1).expect("source");
        assert!(repo().join(src).exists(), "{line}: {src} exists");
    }
    assert!(
        text.contains("ENTRYPOINT [\"/usr/bin/faultline\"]"),
        "{text}"
    );
}
