//! The agent under exactly the privileges the systemd unit ships (capabilities parsed from
//! tracer/packaging/faultline.service, compiled in, an unprivileged uid via setpriv): it starts,
//! and what `faultline check` says is available matches `faultline_feature_available`; a
//! read-write-read convoy is alerted with its holder, writer and reader, and a userfaultfd
//! stall with its handler where the unit's privileges allow userfaultfd waits.

#[path = "common/cgroup.rs"]
mod cgroup;
mod common;
#[path = "common/netns.rs"]
mod netns;

use std::{
    os::unix::fs::PermissionsExt,
    process::Command,
    time::{Duration, Instant},
};

use common::{http_get, require_root, scenario, scenario_lingering, u64_at, u64s, FAULTLINE};

const NOBODY: &str = "65534";

/// Thresholds low enough for the workloads' alerts to come within a few seconds.
const THRESHOLDS: [&str; 8] = [
    "--wait-threshold",
    "1ms",
    "--stall-threshold",
    "150ms",
    "--rwr-threshold",
    "100ms",
    "--snapshot-interval",
    "50ms",
];

const UNIT: &str = include_str!("../packaging/faultline.service");

/// The unit's capabilities (`AmbientCapabilities=`), as setpriv names them (`+bpf,...`),
/// without those the test runner's own bounding set lacks (a container may drop some; they are
/// printed, as the run then grants less than the unit).
fn unit_caps() -> String {
    // Compiled in: the VM tests run this binary where the source tree is not.
    let unit = UNIT;
    let caps: Vec<String> = unit
        .lines()
        .find_map(|l| l.strip_prefix("AmbientCapabilities="))
        .expect("the unit grants ambient capabilities")
        .split_whitespace()
        .map(|c| c.trim_start_matches("CAP_").to_lowercase())
        .collect();
    let bounding = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("the unit bounds capabilities");
    for c in &caps {
        assert!(
            bounding.contains(&format!("CAP_{}", c.to_uppercase())),
            "ambient {c} outside the bounding set"
        );
    }
    setpriv_caps(caps, "the unit")
}

/// `caps` (lower case, no `cap_`) as setpriv names them (`-all,+bpf,...`), without those the
/// test runner's own bounding set lacks (a container may drop some; they are printed, as the
/// run then grants less than `whose` ships).
fn setpriv_caps(caps: Vec<String>, whose: &str) -> String {
    let have = Command::new("setpriv")
        .arg("--dump")
        .output()
        .expect("setpriv --dump");
    let have = String::from_utf8_lossy(&have.stdout).to_lowercase();
    let bset = have
        .lines()
        .find_map(|l| l.strip_prefix("capability bounding set: "))
        .unwrap_or_default()
        .to_owned();
    let (kept, dropped): (Vec<_>, Vec<_>) = caps
        .into_iter()
        .partition(|c| bset.split(',').any(|b| b == c));
    if !dropped.is_empty() {
        eprintln!("the test runner lacks {dropped:?}: running with {kept:?} only, less than {whose} grants");
    }
    std::iter::once("-all".to_owned())
        .chain(kept.iter().map(|c| format!("+{c}")))
        .collect::<Vec<_>>()
        .join(",")
}

fn as_unit(caps: &str) -> Command {
    let mut c = Command::new("setpriv");
    c.args([
        &format!("--reuid={NOBODY}"),
        &format!("--regid={NOBODY}"),
        "--clear-groups",
        &format!("--inh-caps={caps}"),
        &format!("--ambient-caps={caps}"),
        &format!("--bounding-set={caps}"),
    ])
    .arg(FAULTLINE);
    c
}

fn nobodys_dir() -> tempfile::TempDir {
    let d = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(d.path(), PermissionsExt::from_mode(0o700)).expect("chmod");
    std::os::unix::fs::chown(d.path(), Some(65534), Some(65534)).expect("chown to nobody");
    d
}

#[test]
fn under_the_units_capabilities_check_and_the_gauge_agree_on_every_feature() {
    if !require_root("under_the_units_capabilities_check_and_the_gauge_agree_on_every_feature") {
        return;
    }
    let caps = unit_caps();
    let out = as_unit(&caps)
        .args(["check", "--json"])
        .output()
        .expect("check runs");
    let items: serde_json::Value = serde_json::from_slice(&out.stdout).expect("check JSON");
    let mut from_check = privilege_items(&items);
    from_check.sort();

    let (run, state) = (nobodys_dir(), nobodys_dir());
    let log = tempfile::NamedTempFile::new().expect("log file");
    let mut agent = as_unit(&caps)
        .args(["agent", "--listen", "127.0.0.1:0", "--state-dir"])
        .arg(state.path())
        .args(THRESHOLDS)
        .env("RUST_LOG", "info")
        .env("FAULTLINE_RUN_DIR", run.path())
        .stderr(log.reopen().expect("log"))
        .spawn()
        .expect("the agent starts");
    let text = wait_for_start(&mut agent, log.path());
    let addr = text
        .split("API on http://")
        .nth(1)
        .and_then(|r| r.split([',', ' ']).next())
        .unwrap_or_else(|| panic!("no start line:\n{text}"))
        .to_owned();
    let agent = KillOnDrop(agent);
    let (status, body) = http_get(&addr, "/metrics");
    assert_eq!(status, 200, "{body}");
    let from_gauge = gauge_items(&body);
    assert_eq!(from_check, from_gauge, "check and the gauge disagree");
    assert_every_missing_feature_said(&from_gauge, &text);
    let available = |f: &str| from_gauge.iter().any(|(n, ok)| n == f && *ok);

    // What the docs promise under these privileges: a convoy alert names its holder, writer
    // and reader. The holder's kernel stack needs CAP_SYS_ADMIN, which the unit does not grant;
    // the owner word still names the holder (as inferred).
    let (child, convoy) = scenario_lingering(&["rwr", "--hold-mib", "2048", "--announce"]);
    let child = KillOnDrop(child);
    let (holder, writer, reader) = (
        u64_at(&convoy, &["holder"]),
        u64_at(&convoy, &["writer"]),
        u64_at(&convoy, &["reader"]),
    );
    let inversion = alert_for(&addr, "rwr_inversion", reader, Duration::from_secs(20));
    assert_eq!(
        u64s(&inversion, "tids"),
        vec![reader, writer, holder],
        "reader, writer, holder under the unit's privileges: {inversion:#}"
    );
    drop(child);

    // A userfaultfd stall names its handler where uffd_waits is available; where it is not,
    // check, the gauge and the start-up line said so above.
    if available("uffd_waits") {
        let uffd = scenario(&["uffd-stall", "--delay-ms", "1500"]);
        let faulter = u64_at(&uffd, &["faulter", "tid"]);
        let monitor = u64_at(&uffd, &["monitor_tid"]);
        let stall = alert_for(&addr, "uffd_stall", faulter, Duration::from_secs(10));
        assert!(
            stall.to_string().contains(&monitor.to_string()),
            "the stall names its handler {monitor}: {stall:#}"
        );
    } else {
        eprintln!("uffd_waits unavailable under the unit's privileges: its stall not checked");
    }
    drop(agent);
}

/// `privilege: NAME` items of `check --json`, as (NAME, available).
fn privilege_items(items: &serde_json::Value) -> Vec<(String, bool)> {
    let found: Vec<(String, bool)> = items
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|i| {
            let name = i["name"].as_str()?.strip_prefix("privilege: ")?;
            Some((name.to_owned(), i["available"].as_bool()?))
        })
        .collect();
    assert!(!found.is_empty(), "check lists the privilege items");
    found
}

/// `faultline_feature_available{feature}` of a scrape, sorted.
fn gauge_items(metrics: &str) -> Vec<(String, bool)> {
    let mut found: Vec<(String, bool)> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix("faultline_feature_available{feature=\""))
        .filter_map(|l| {
            let (name, value) = l.split_once("\"} ")?;
            Some((name.to_owned(), value.trim() == "1"))
        })
        .collect();
    found.sort();
    found
}

/// Every missing feature has its start-up line saying why and what grants it.
fn assert_every_missing_feature_said(features: &[(String, bool)], log: &str) {
    for (name, ok) in features {
        if !ok {
            assert!(
                log.lines()
                    .any(|l| l.contains(&format!("feature {name} unavailable: "))
                        && l.contains("; needs ")),
                "no start-up line for {name}:\n{log}"
            );
        }
    }
}

/// The agent's log once it serves its API (30 s at most; a panic if it exits first).
fn wait_for_start(agent: &mut std::process::Child, log: &std::path::Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let t = std::fs::read_to_string(log).unwrap_or_default();
        if t.contains("API on http") || Instant::now() > deadline {
            return t;
        }
        if let Ok(Some(status)) = agent.try_wait() {
            panic!("the agent exited ({status}):\n{t}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Kills the agent or workload when the test ends, a failed one too.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The first alert of `kind` whose chain starts at `tid`, waited for up to `limit`.
fn alert_for(addr: &str, kind: &str, tid: u64, limit: Duration) -> serde_json::Value {
    let deadline = Instant::now() + limit;
    loop {
        let (status, body) = http_get(addr, "/api/alerts");
        let doc: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        let found = doc["alerts"].as_array().and_then(|a| {
            a.iter()
                .find(|a| a["kind"] == kind && u64s(a, "tids").first() == Some(&tid))
                .cloned()
        });
        if let Some(a) = found {
            return a;
        }
        assert!(
            Instant::now() < deadline,
            "no {kind} alert for {tid} within {limit:?} ({status}): {body}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

const MANIFEST: &str = include_str!("../../deploy/kubernetes/faultline.yaml");

/// The DaemonSet's container, as the manifest ships it (compiled in, for the VM tests).
fn daemonset_container() -> serde_json::Value {
    use serde::Deserialize;
    serde_norway::Deserializer::from_str(MANIFEST)
        .map(|doc| serde_json::Value::deserialize(doc).expect("a YAML document of the manifest"))
        .find(|d| d["kind"] == "DaemonSet")
        .expect("the manifest has a DaemonSet")["spec"]["template"]["spec"]["containers"][0]
        .clone()
}

/// The container's added capabilities as setpriv names them (`-all,+bpf,...`), without those
/// the test runner's own bounding set lacks.
fn daemonset_caps(container: &serde_json::Value) -> String {
    let sc = &container["securityContext"];
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    let caps: Vec<String> = sc["capabilities"]["add"]
        .as_array()
        .expect("capabilities added")
        .iter()
        .filter_map(|c| c.as_str())
        .map(str::to_lowercase)
        .collect();
    setpriv_caps(caps, "the DaemonSet")
}

/// What the container runtime sets up for the DaemonSet's pod, done with util-linux in new
/// mount and cgroup namespaces: the host's cgroup2 tree and the kubelet's log directories
/// read-only under a `/host`-shaped directory, the container's own cgroup2 view (its namespace
/// root only), read-only BTF and tracefs, a memory /run, a read-only root with the state
/// directory writable; then uid 0 with only the added capabilities and no new privileges.
/// It prints /proc/self/cgroup first, so the test can see the namespace is private. util-linux
/// is called by path: the VM guests' busybox sh runs its own applets first, whose options differ.
const CONTAINER_SETUP: &str = r#"
set -e
cg2="$FL_CGROUP2"
/usr/bin/mount --bind "$cg2" "$FL_HOST/sys/fs/cgroup"
/usr/bin/mount -o remount,bind,ro "$FL_HOST/sys/fs/cgroup"
for d in var/log/pods var/log/containers; do
    /usr/bin/mount --bind "$FL_LOGS/$d" "$FL_HOST/$d"
    /usr/bin/mount -o remount,bind,ro "$FL_HOST/$d"
done
# The kernel refuses the same superblock twice on one mount point: the host's view goes first.
/usr/bin/umount -l "$cg2"
/usr/bin/mount -t cgroup2 cgroup2 "$cg2"
for d in /sys/kernel/btf /sys/kernel/tracing; do
    if /usr/bin/mountpoint -q "$d"; then /usr/bin/mount -o remount,bind,ro "$d"; fi
done
/usr/bin/mount --bind "$FL_STATE" "$FL_STATE"
/usr/bin/mount -t tmpfs -o size=1m,mode=0755 tmpfs /run
/usr/bin/mount -o remount,bind,ro /
echo "container cgroup: $(grep '^0::' /proc/self/cgroup)" >&2
exec /usr/bin/setpriv --no-new-privs --inh-caps="$FL_CAPS" --ambient-caps="$FL_CAPS" \
    --bounding-set="$FL_CAPS" "$@"
"#;

/// The DaemonSet's environment and mounts around one faultline command.
struct Container {
    cgroups: cgroup::TestCgroups,
    rel: &'static str,
    net: String,
    host: tempfile::TempDir,
    logs: std::path::PathBuf,
    state: tempfile::TempDir,
    caps: String,
    env: Vec<(String, String)>,
}

impl Container {
    fn command(&self, args: &[&str]) -> Command {
        let procs = self.cgroups.dir(self.rel).join("cgroup.procs");
        let mut c = Command::new("sh");
        c.arg("-c")
            // Into the container's cgroup first, so the new cgroup namespace is rooted there.
            .arg(
                "echo $$ > \"$FL_PROCS\" && exec nsenter --net=\"$FL_NET\" /usr/bin/unshare \
                 --mount --cgroup --propagation private sh -c \"$FL_SETUP\" container \"$@\"",
            )
            .arg("sh")
            .arg(FAULTLINE)
            .args(args)
            .env("FL_PROCS", procs)
            .env("FL_NET", &self.net)
            .env("FL_SETUP", CONTAINER_SETUP)
            .env("FL_CGROUP2", cgroup::cgroup2_root())
            .env("FL_HOST", self.host.path())
            .env("FL_LOGS", &self.logs)
            .env("FL_STATE", self.state.path())
            .env("FL_CAPS", &self.caps)
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        c
    }
}

#[test]
fn under_the_daemonsets_security_context_a_convoy_in_a_pod_is_named_with_its_pod() {
    if !require_root(
        "under_the_daemonsets_security_context_a_convoy_in_a_pod_is_named_with_its_pod",
    ) {
        return;
    }
    let container = daemonset_container();
    let sc = &container["securityContext"];
    assert_eq!(sc["runAsUser"], 0, "the DaemonSet runs as uid 0");
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    let caps = daemonset_caps(&container);

    // The node: a kubepods-shaped cgroup for the workload's pod, one for the agent's own
    // container, and the kubelet's log directories naming the workload's pod.
    let mut cgroups = cgroup::TestCgroups::new("daemonset");
    let (cid, uid) = (cgroup::container_id(7), cgroup::pod_uid());
    let workload_rel = format!(
        "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{cid}.scope",
        uid.replace('-', "_")
    );
    let workload_path = cgroups.make(&workload_rel);
    const AGENT_REL: &str = "kubepods.slice/faultline-agent.scope";
    cgroups.make(AGENT_REL);
    let logs = tempfile::tempdir().expect("tempdir");
    let (namespace, pod) = ("shop", format!("cart-{}", std::process::id()));
    let container_dir = logs
        .path()
        .join(format!("var/log/pods/{namespace}_{pod}_{uid}/app"));
    std::fs::create_dir_all(&container_dir).expect("pod log dir");
    std::fs::create_dir_all(logs.path().join("var/log/containers")).expect("containers dir");
    std::fs::write(container_dir.join("0.log"), "").expect("log file");
    std::os::unix::fs::symlink(
        container_dir.join("0.log"),
        logs.path().join(format!(
            "var/log/containers/{pod}_{namespace}_app-{cid}.log"
        )),
    )
    .expect("container log link");

    // The container's `/host` mount points, and its environment from the manifest with
    // `/host` at that directory.
    let host = tempfile::tempdir().expect("tempdir");
    for d in ["sys/fs/cgroup", "var/log/pods", "var/log/containers"] {
        std::fs::create_dir_all(host.path().join(d)).expect("mount point");
    }
    let env: Vec<(String, String)> = container["env"]
        .as_array()
        .expect("the container's env")
        .iter()
        .filter_map(|e| {
            let (k, v) = (e["name"].as_str()?, e["value"].as_str()?);
            let v = match v.strip_prefix("/host/") {
                Some(rest) => host.path().join(rest).display().to_string(),
                None => v.to_owned(),
            };
            Some((k.to_owned(), v))
        })
        .collect();
    assert!(
        env.iter().any(|(k, _)| k == "FAULTLINE_CGROUP_ROOT"),
        "the DaemonSet says where the host's cgroups are: {env:?}"
    );
    // The pod's own network namespace (not hostNetwork).
    let ns = netns::Netns::new('d', 0);
    let c = Container {
        cgroups,
        rel: AGENT_REL,
        net: ns.path(),
        host,
        logs: logs.path().to_owned(),
        state: tempfile::tempdir().expect("tempdir"),
        caps,
        env,
    };

    let out = c
        .command(&["check", "--json"])
        .output()
        .expect("check runs");
    let items: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "check JSON under the DaemonSet's context: {e}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let mut from_check = privilege_items(&items);
    from_check.sort();

    let log = tempfile::NamedTempFile::new().expect("log file");
    let addr = format!("{}:{}", ns.ns_ip, netns::AGENT_PORT);
    let state = c.state.path().display().to_string();
    let mut agent = c
        .command(&["agent", "--listen", &addr, "--state-dir", &state])
        .args(THRESHOLDS)
        .env("RUST_LOG", "info")
        .stderr(log.reopen().expect("log"))
        .spawn()
        .expect("the agent starts");
    let text = wait_for_start(&mut agent, log.path());
    let _agent = KillOnDrop(agent);
    assert!(
        text.lines().any(|l| l.trim() == "container cgroup: 0::/"),
        "the agent's cgroup namespace is private:\n{text}"
    );
    let (status, body) = http_get(&addr, "/metrics");
    assert_eq!(status, 200, "{body}");
    let from_gauge = gauge_items(&body);
    assert_eq!(from_check, from_gauge, "check and the gauge disagree");
    assert_every_missing_feature_said(&from_gauge, &text);

    // A convoy in the pod's container: its alert names holder, writer and reader, and the
    // pod by namespace, name and container (the host's cgroup ids resolved through the
    // read-only host tree, not the container's own view).
    let scenario = common::SCENARIO.to_str().expect("utf-8 scenario path");
    let out = c
        .cgroups
        .spawn_in(
            &workload_rel,
            scenario,
            &["rwr", "--hold-mib", "2048"],
            std::process::Stdio::piped(),
        )
        .wait_with_output()
        .expect("run the convoy");
    assert!(out.status.success(), "the convoy scenario failed");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("scenario report");
    assert_eq!(report["convoy"], true, "no convoy formed: {report}");
    let [holder, writer, reader] =
        ["holder", "writer", "reader"].map(|w| u64_at(&report, &[w, "tid"]));
    let alert = alert_for(&addr, "rwr_inversion", reader, Duration::from_secs(20));
    assert_eq!(
        u64s(&alert, "tids"),
        vec![reader, writer, holder],
        "{alert:#}"
    );
    assert_eq!(alert["cgroup"], workload_path.as_str(), "{alert:#}");
    assert_eq!(alert["workload"]["namespace"], namespace, "{alert:#}");
    assert_eq!(alert["workload"]["pod"], pod.as_str(), "{alert:#}");
    assert_eq!(alert["workload"]["container"], "app", "{alert:#}");
}
