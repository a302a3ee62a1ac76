//! Workload attribution on the real kernel: processes in cgroups shaped like systemd, Docker and
//! kubepods/CRI trees are named by their workload, and a convoy run inside a pod's container
//! cgroup is named by that pod and container (namespace/pod/container, from a kubelet-shaped
//! `/var/log/pods` tree) in the alert, the graph and the metrics.

#[path = "common/cgroup.rs"]
mod cgroup;
mod common;
#[path = "common/netns.rs"]
mod netns;

use std::{process::Stdio, time::Duration};

use cgroup::{container_id, pod_uid, TestCgroups};
use common::{http_get, require_root, u64_at, u64s, SCENARIO};
use netns::{Netns, NsAgent};
use tracer::kernel::workload::{Resolver, Runtime, Workload};

#[test]
fn processes_in_systemd_docker_and_kubepods_cgroups_resolve_to_their_workload() {
    if !require_root("processes_in_systemd_docker_and_kubepods_cgroups_resolve_to_their_workload") {
        return;
    }
    let mut cg = TestCgroups::new("shapes");
    let (docker, cri, uid) = (container_id(1), container_id(2), pod_uid());
    let shapes = [
        (
            "system.slice/fltest.service".to_string(),
            Workload::Systemd {
                unit: "fltest.service".into(),
            },
        ),
        (
            format!("system.slice/docker-{docker}.scope"),
            Workload::Container {
                runtime: Runtime::Docker,
                id: docker.clone(),
            },
        ),
        (
            format!(
                "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{cri}.scope",
                uid.replace('-', "_")
            ),
            Workload::Pod {
                uid: uid.clone(),
                qos: Some("burstable".into()),
                container_id: Some(cri.clone()),
                runtime: Some(Runtime::Containerd),
                names: None,
            },
        ),
        (
            format!("kubepods/besteffort/pod{uid}/{docker}"),
            Workload::Pod {
                uid: uid.clone(),
                qos: Some("besteffort".into()),
                container_id: Some(docker.clone()),
                runtime: None,
                names: None,
            },
        ),
    ];
    let mut resolver = Resolver::new("/proc");
    for (rel, expected) in &shapes {
        let path = cg.make(rel);
        let mut child = cg.spawn_in(rel, "sleep", &["30"], Stdio::null());
        // The shell moves itself, then execs: wait until /proc shows the move.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let pid = child.id();
        let attribution = loop {
            let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
            if tracer::kernel::workload::cgroup_v2_path(&text) == Some(path.as_str()) {
                break Resolver::new("/proc").resolve(pid);
            }
            assert!(
                std::time::Instant::now() < deadline,
                "pid {pid} never showed cgroup {path}: {text}"
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        let a = attribution.expect("a live process resolves");
        assert_eq!(a.cgroup, path);
        assert_eq!(a.workload.as_ref(), Some(expected), "{path}");
        assert_eq!(resolver.resolve(pid), Some(a));
        let _ = child.kill();
        let _ = child.wait();
    }
}

#[test]
fn a_convoy_in_a_pod_container_is_named_by_its_workload_in_the_alert_graph_and_metrics() {
    if !require_root(
        "a_convoy_in_a_pod_container_is_named_by_its_workload_in_the_alert_graph_and_metrics",
    ) {
        return;
    }
    let mut cg = TestCgroups::new("convoy");
    let (cid, uid) = (container_id(3), pod_uid());
    let rel = format!(
        "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{cid}.scope",
        uid.replace('-', "_")
    );
    let path = cg.make(&rel);
    // The kubelet's log directories, as a node has them: the pod's directory names its
    // namespace and name, the runtime's link names the container by its id.
    let (namespace, pod) = ("faultline-test", format!("cart-{}", std::process::id()));
    let logs = tempfile::tempdir().expect("tempdir");
    let (pods_dir, containers_dir) = (logs.path().join("pods"), logs.path().join("containers"));
    let container_dir = pods_dir.join(format!("{namespace}_{pod}_{uid}/app"));
    std::fs::create_dir_all(&container_dir).expect("pod log dir");
    std::fs::create_dir_all(&containers_dir).expect("containers dir");
    std::fs::write(container_dir.join("0.log"), "").expect("log file");
    std::os::unix::fs::symlink(
        container_dir.join("0.log"),
        containers_dir.join(format!("{pod}_{namespace}_app-{cid}.log")),
    )
    .expect("container log link");
    let label = format!("pod:{namespace}/{pod}/app");

    // The host is shared (builds, other tests): the agent and the convoy get a network
    // namespace of their own and the agent reports only that namespace (--scope netns).
    let ns = Netns::new('w', 0);
    let agent = NsAgent::start_with_env(
        &ns,
        &[
            "--wait-threshold",
            "1ms",
            "--hold-threshold",
            "20ms",
            "--stall-threshold",
            "150ms",
            "--rwr-threshold",
            "100ms",
            "--snapshot-interval",
            "50ms",
        ],
        &[
            ("FAULTLINE_PODS_LOG_DIR", &pods_dir),
            ("FAULTLINE_CONTAINERS_LOG_DIR", &containers_dir),
        ],
    );
    let addr = agent.addr.clone();
    let netns_arg = format!("--net={}", ns.path());
    let scenario = SCENARIO.to_str().expect("utf-8 scenario path");
    let out = cg
        .spawn_in(
            &rel,
            "nsenter",
            &[&netns_arg, scenario, "rwr", "--hold-mib", "2048"],
            Stdio::piped(),
        )
        .wait_with_output()
        .expect("run the convoy");
    assert!(out.status.success(), "the convoy scenario failed");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("scenario report");
    assert_eq!(report["convoy"], true, "no convoy formed: {report}");
    let convoy: Vec<u64> = ["holder", "writer", "reader"]
        .iter()
        .map(|w| u64_at(&report, &[w, "tid"]))
        .collect();

    // The alert about the convoy (the inversion, or a stall of the writer or the reader when
    // a loaded host stretches the timing) names the pod and the container.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let alert = loop {
        let (status, body) = http_get(&addr, "/api/alerts");
        assert_eq!(status, 200, "{body}");
        let doc: serde_json::Value = serde_json::from_str(&body).expect("alerts JSON");
        let ours: Vec<serde_json::Value> = doc["alerts"]
            .as_array()
            .expect("alerts")
            .iter()
            .filter(|a| {
                matches!(a["kind"].as_str(), Some("rwr_inversion" | "stall"))
                    && u64s(a, "tids")
                        .first()
                        .is_some_and(|t| convoy[1..].contains(t))
            })
            .cloned()
            .collect();
        let pick = ours
            .iter()
            .find(|a| a["kind"] == "rwr_inversion")
            .or_else(|| ours.first());
        if let Some(a) = pick {
            break a.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no alert about the convoy {convoy:?} in 20 s: {doc:#}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let kind = alert["kind"].as_str().expect("kind").to_owned();
    assert_eq!(alert["cgroup"], path.as_str(), "{alert:#}");
    assert_eq!(alert["workload"]["type"], "pod", "{alert:#}");
    assert_eq!(alert["workload"]["uid"], uid.as_str(), "{alert:#}");
    assert_eq!(alert["workload"]["container_id"], cid.as_str(), "{alert:#}");
    assert_eq!(alert["workload"]["runtime"], "containerd", "{alert:#}");
    assert_eq!(alert["workload"]["namespace"], namespace, "{alert:#}");
    assert_eq!(alert["workload"]["pod"], pod.as_str(), "{alert:#}");
    assert_eq!(alert["workload"]["container"], "app", "{alert:#}");

    // The graph at detection (the incident) names it for every task of the convoy.
    let (incident, inc) = std::fs::read_dir(agent.state())
        .expect("state dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with(&format!("-{kind}.json")))
        .find_map(|p| {
            let doc: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&p).ok()?).ok()?;
            (doc["alert"]["tids"] == alert["tids"]).then_some((p, doc))
        })
        .unwrap_or_else(|| panic!("the incident of {alert:#}"));
    let tasks = inc["graph"]["tasks"].as_array().expect("graph tasks");
    // The host runs other things (builds, other tests): look at the convoy's own tasks.
    let ours: Vec<&serde_json::Value> = tasks
        .iter()
        .filter(|t| t["tid"].as_u64().is_some_and(|tid| convoy.contains(&tid)))
        .collect();
    assert!(ours.len() >= 2, "the convoy is in the graph: {inc:#}");
    for t in ours {
        assert_eq!(t["cgroup"], path.as_str(), "every convoy task: {t:#}");
        assert_eq!(t["workload"]["uid"], uid.as_str(), "{t:#}");
        assert_eq!(t["workload"]["pod"], pod.as_str(), "{t:#}");
    }
    let dot = std::fs::read_to_string(incident.with_extension("dot")).expect("incident DOT");
    assert!(
        dot.contains(&label),
        "the DOT graph names the workload: {dot}"
    );

    // The metrics count the alert and the slow waits under the workload.
    let (status, metrics) = http_get(&addr, "/metrics");
    assert_eq!(status, 200);
    let value = |series: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(series))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {series} in the scrape:\n{metrics}"))
    };
    assert!(
        value(&format!(
            "faultline_workload_alerts_total{{workload=\"{label}\",kind=\"{kind}\"}}"
        )) >= 1.0
    );
    assert!(
        value(&format!(
            "faultline_workload_slow_waits_total{{workload=\"{label}\"}}"
        )) >= 1.0
    );
    // The per-process families carry the process's workload and cgroup path too.
    assert!(
        value(&format!(
            "faultline_process_slow_waits_total{{process=\"faultline-scena\",workload=\"{label}\",cgroup=\"{path}\"}}"
        )) >= 1.0
    );
    drop(agent);
}
