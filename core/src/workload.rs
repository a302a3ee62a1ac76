//! Workload attribution: which systemd unit, container or Kubernetes pod a process belongs to,
//! read from its cgroup v2 path (`/proc/PID/cgroup`, the `0::` line). Pure: the agent's
//! `kernel::workload` reads /proc and caches.
//!
//! The path is classified by the conventions the common managers follow:
//! - systemd: `…/foo.service`, `…/session-3.scope`, `…/user.slice`;
//! - Docker: `docker-<id>.scope` (systemd driver) or `/docker/<id>` (cgroupfs driver);
//! - containerd (CRI) `cri-containerd-<id>.scope`, CRI-O `crio-<id>.scope`, Podman
//!   `libpod-<id>.scope`;
//! - Kubernetes: `kubepods[-<qos>]-pod<uid with _>.slice/<container scope>` (systemd driver) or
//!   `/kubepods/<qos>/pod<uid>/<id>` (cgroupfs driver).
//!
//! Conventions are matched wherever they sit in the path, so a node whose cgroups live under a
//! prefix (nested containers, a test's own subtree) is classified the same way. A path that
//! follows none of them keeps its cgroup and has no workload.

use std::{fmt, path::PathBuf};

use serde::Serialize;

/// The container runtime a container id belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    Docker,
    Containerd,
    Crio,
    Podman,
}

impl Runtime {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Docker => "docker",
            Self::Containerd => "containerd",
            Self::Crio => "crio",
            Self::Podman => "podman",
        }
    }
}

/// What a cgroup path says about who runs the process.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Workload {
    /// A systemd unit: a service, a scope, or (when nothing finer is known) a slice.
    Systemd { unit: String },
    /// A container outside Kubernetes.
    Container { runtime: Runtime, id: String },
    /// A Kubernetes pod, and the container in it when the path goes that deep. The cgroupfs
    /// driver's paths do not name the runtime.
    Pod {
        uid: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        qos: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        container_id: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        runtime: Option<Runtime>,
        /// Namespace, pod and container names, when the node says (the kubelet's log
        /// directories); `None` keeps the uid and container id form.
        #[serde(flatten, skip_serializing_if = "Option::is_none")]
        names: Option<PodNames>,
    },
}

/// What the on-call engineer searches for: the pod's namespace and name, and the container's
/// name when the container id could be matched to one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PodNames {
    pub namespace: String,
    pub pod: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
}

impl fmt::Display for PodNames {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.pod)?;
        match &self.container {
            Some(c) => write!(f, "/{c}"),
            None => Ok(()),
        }
    }
}

/// Container ids are shown shortened, as `docker ps` and `crictl ps` do.
const SHORT_ID: usize = 12;

fn short(id: &str) -> &str {
    id.get(..SHORT_ID).unwrap_or(id)
}

impl fmt::Display for Workload {
    /// The compact form used as a metric label value and in log lines.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Systemd { unit } => write!(f, "systemd:{unit}"),
            Self::Container { runtime, id } => write!(f, "{}:{}", runtime.as_str(), short(id)),
            // Keeps the `pod:` prefix so routes matching `workload=~"pod:.*"` keep working.
            Self::Pod {
                names: Some(n),
                container_id,
                ..
            } => match (&n.container, container_id) {
                // A container id with no name: its short id stands in for the name.
                (None, Some(c)) => write!(f, "pod:{n}/{}", short(c)),
                _ => write!(f, "pod:{n}"),
            },
            Self::Pod {
                uid, container_id, ..
            } => match container_id {
                Some(c) => write!(f, "pod:{uid}/{}", short(c)),
                None => write!(f, "pod:{uid}"),
            },
        }
    }
}

fn is_hex_id(s: &str) -> bool {
    s.len() >= SHORT_ID && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A full container id as runtimes write it into cgroup names: 64 hex digits.
fn is_full_id(s: &str) -> bool {
    s.len() == 64 && is_hex_id(s)
}

fn is_pod_uid(s: &str) -> bool {
    s.len() == 36
        && s.bytes().enumerate().all(|(i, b)| {
            matches!(i, 8 | 13 | 18 | 23) == (b == b'-') && (b == b'-' || b.is_ascii_hexdigit())
        })
}

/// A systemd-driver container scope: `docker-<id>.scope`, `cri-containerd-<id>.scope`,
/// `crio-<id>.scope`, `libpod-<id>.scope`.
fn container_scope(c: &str) -> Option<(Runtime, &str)> {
    let stem = c.strip_suffix(".scope")?;
    [
        ("docker-", Runtime::Docker),
        ("cri-containerd-", Runtime::Containerd),
        ("crio-", Runtime::Crio),
        ("libpod-", Runtime::Podman),
    ]
    .into_iter()
    .find_map(|(prefix, rt)| {
        stem.strip_prefix(prefix)
            .filter(|id| is_full_id(id))
            .map(|id| (rt, id))
    })
}

/// A pod component: `kubepods-burstable-pod<uid_>.slice`, `kubepods-pod<uid_>.slice` (systemd
/// driver), or `pod<uid>` under a `kubepods` ancestor (cgroupfs driver). Returns (uid, qos).
fn pod_component(c: &str, under_kubepods: bool) -> Option<(String, Option<String>)> {
    if let Some(stem) = c.strip_suffix(".slice") {
        let rest = stem.strip_prefix("kubepods-")?;
        let (qos, uid) = match rest.rsplit_once("-pod") {
            Some((qos, uid)) => (Some(qos.to_owned()), uid),
            None => (None, rest.strip_prefix("pod")?),
        };
        let uid = uid.replace('_', "-");
        return is_pod_uid(&uid).then_some((uid, qos));
    }
    if !under_kubepods {
        return None;
    }
    let uid = c.strip_prefix("pod")?;
    is_pod_uid(uid).then(|| (uid.to_owned(), None))
}

/// Classifies a cgroup v2 path (as in `/proc/PID/cgroup`, starting with `/`).
pub fn classify(path: &str) -> Option<Workload> {
    let comps: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    // Kubernetes first: a pod's containers are also container scopes.
    for (i, c) in comps.iter().enumerate() {
        let under_kubepods = comps[..i]
            .iter()
            .any(|a| *a == "kubepods" || a.starts_with("kubepods-") || *a == "kubepods.slice");
        if let Some((uid, mut qos)) = pod_component(c, under_kubepods) {
            // cgroupfs driver: the QoS class is the component between kubepods and the pod.
            if qos.is_none() && i >= 1 && matches!(comps[i - 1], "burstable" | "besteffort") {
                qos = Some(comps[i - 1].to_owned());
            }
            let (runtime, container_id) = match comps.get(i + 1) {
                Some(next) => match container_scope(next) {
                    Some((rt, id)) => (Some(rt), Some(id.to_owned())),
                    None if is_hex_id(next) => (None, Some((*next).to_owned())),
                    None => (None, None),
                },
                None => (None, None),
            };
            return Some(Workload::Pod {
                uid,
                qos,
                container_id,
                runtime,
                names: None,
            });
        }
    }
    // The outermost container: what a container runs inside (its own systemd, nested cgroups)
    // belongs to it.
    for (i, c) in comps.iter().enumerate() {
        if let Some((runtime, id)) = container_scope(c) {
            return Some(Workload::Container {
                runtime,
                id: id.to_owned(),
            });
        }
        if i >= 1 && comps[i - 1] == "docker" && is_full_id(c) {
            return Some(Workload::Container {
                runtime: Runtime::Docker,
                id: (*c).to_owned(),
            });
        }
    }
    let unit = comps
        .iter()
        .rev()
        .find(|c| c.ends_with(".service") || c.ends_with(".scope"))
        .or_else(|| comps.iter().rev().find(|c| c.ends_with(".slice")))?;
    Some(Workload::Systemd {
        unit: (*unit).to_owned(),
    })
}

/// The cgroup v2 path in the text of `/proc/PID/cgroup`: the `0::` line (on hybrid hosts the
/// v1 hierarchies come first).
pub fn cgroup_v2_path(proc_cgroup: &str) -> Option<&str> {
    proc_cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::trim_end)
}

/// Where cgroup2 is mounted, from the text of `/proc/self/mountinfo`: `/sys/fs/cgroup` on
/// cgroup2-only hosts, `/sys/fs/cgroup/unified` on hybrid ones.
pub fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        (right.split_whitespace().next()? == "cgroup2")
            .then(|| left.split_whitespace().nth(4).map(PathBuf::from))?
    })
}

/// The mount points of the cgroup2 mounts rooted at the reader's cgroup namespace root: the
/// kernel shows a cgroup mount's root (field 4 of mountinfo) relative to the reader's namespace,
/// so `/` is that root and a host tree seen from a private namespace shows `/..`.
pub fn cgroup2_ns_root_mounts(mountinfo: &str) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            if right.split_whitespace().next()? != "cgroup2" {
                return None;
            }
            let mut fields = left.split_whitespace();
            let root = fields.nth(3)?;
            (root == "/").then(|| fields.next().map(PathBuf::from))?
        })
        .collect()
}

/// A path of `/proc/PID/cgroup`, which the kernel gives relative to the reader's cgroup
/// namespace root (`/../kubepods.slice/...` for a cgroup outside it), as a path of the host's
/// tree, given where that namespace root sits in it (`/` outside any private namespace).
/// `None` when the path climbs above the host's root (a wrong `ns_root`).
pub fn rebase_cgroup_path(ns_root: &str, rel: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for part in ns_root.split('/').chain(rel.split('/')) {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            name => parts.push(name),
        }
    }
    Some(format!("/{}", parts.join("/")))
}

/// A process's cgroup and, when its path follows a known convention, its workload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Attribution {
    pub cgroup: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workload: Option<Workload>,
}

impl Attribution {
    pub fn from_path(cgroup: &str) -> Self {
        Self {
            cgroup: cgroup.to_owned(),
            workload: classify(cgroup),
        }
    }

    /// A pod's (uid, container id) when its names are still unknown: what a node-side lookup
    /// ([`Self::name_pod`]) needs.
    pub fn unnamed_pod(&self) -> Option<(&str, Option<&str>)> {
        match &self.workload {
            Some(Workload::Pod {
                uid,
                container_id,
                names: None,
                ..
            }) => Some((uid, container_id.as_deref())),
            _ => None,
        }
    }

    /// Adds the names found for a pod; anything else is left as it is.
    pub fn name_pod(&mut self, found: PodNames) {
        if let Some(Workload::Pod { names, .. }) = &mut self.workload {
            *names = Some(found);
        }
    }

    /// The metric label: the workload, or the bare cgroup when no convention names one.
    pub fn label(&self) -> String {
        match &self.workload {
            Some(w) => w.to_string(),
            None if self.cgroup == "/" => "host".to_owned(),
            None => format!("cgroup:{}", self.cgroup),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4f1c9b0e7a2d8c6b5e3f1a0d9c8b7a6e5d4c3b2a1f0e9d8c7b6a5f4e3d2c1b0a";
    const UID: &str = "0d3e6c2a-7b1f-4e59-9a8d-2c4b6e8f0a1c";

    fn pod_uid_underscored() -> String {
        UID.replace('-', "_")
    }

    #[test]
    fn systemd_units_scopes_and_slices() {
        assert_eq!(
            classify("/system.slice/nginx.service"),
            Some(Workload::Systemd {
                unit: "nginx.service".into()
            })
        );
        assert_eq!(
            classify("/user.slice/user-1000.slice/session-3.scope"),
            Some(Workload::Systemd {
                unit: "session-3.scope".into()
            })
        );
        assert_eq!(
            classify("/user.slice/user-1000.slice"),
            Some(Workload::Systemd {
                unit: "user-1000.slice".into()
            })
        );
        assert_eq!(classify("/"), None);
        assert_eq!(classify("/some/custom/group"), None);
    }

    #[test]
    fn docker_in_both_drivers_and_other_runtimes() {
        let docker = Some(Workload::Container {
            runtime: Runtime::Docker,
            id: ID.into(),
        });
        assert_eq!(
            classify(&format!("/system.slice/docker-{ID}.scope")),
            docker
        );
        assert_eq!(classify(&format!("/docker/{ID}")), docker);
        // What runs inside the container belongs to it.
        assert_eq!(
            classify(&format!("/system.slice/docker-{ID}.scope/init.scope")),
            docker
        );
        for (prefix, runtime) in [
            ("cri-containerd-", Runtime::Containerd),
            ("crio-", Runtime::Crio),
            ("libpod-", Runtime::Podman),
        ] {
            assert_eq!(
                classify(&format!("/system.slice/{prefix}{ID}.scope")),
                Some(Workload::Container {
                    runtime,
                    id: ID.into()
                })
            );
        }
        // Not a 64-digit id: just a scope.
        assert_eq!(
            classify("/system.slice/docker-abc.scope"),
            Some(Workload::Systemd {
                unit: "docker-abc.scope".into()
            })
        );
    }

    #[test]
    fn kubernetes_pods_in_the_systemd_and_cgroupfs_drivers() {
        let p = pod_uid_underscored();
        let w = classify(&format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{p}.slice/cri-containerd-{ID}.scope"
        ));
        assert_eq!(
            w,
            Some(Workload::Pod {
                uid: UID.into(),
                qos: Some("burstable".into()),
                container_id: Some(ID.into()),
                runtime: Some(Runtime::Containerd),
                names: None,
            })
        );
        assert_eq!(
            w.map(|w| w.to_string()),
            Some(format!("pod:{UID}/{}", &ID[..12]))
        );
        // Guaranteed pods sit directly under kubepods.slice; the pod cgroup itself has no
        // container.
        assert_eq!(
            classify(&format!("/kubepods.slice/kubepods-pod{p}.slice")),
            Some(Workload::Pod {
                uid: UID.into(),
                qos: None,
                container_id: None,
                runtime: None,
                names: None,
            })
        );
        assert_eq!(
            classify(&format!("/kubepods/burstable/pod{UID}/{ID}")),
            Some(Workload::Pod {
                uid: UID.into(),
                qos: Some("burstable".into()),
                container_id: Some(ID.into()),
                runtime: None,
                names: None,
            })
        );
        // `pod<uid>` outside kubepods is nobody's pod.
        assert_eq!(classify(&format!("/pod{UID}")), None);
    }

    #[test]
    fn conventions_are_found_under_a_prefix() {
        assert_eq!(
            classify(&format!("/faultline-test-1/system.slice/crio-{ID}.scope")),
            Some(Workload::Container {
                runtime: Runtime::Crio,
                id: ID.into()
            })
        );
    }

    #[test]
    fn the_v2_line_is_found_on_hybrid_and_pure_hosts() {
        let hybrid = "9:name=systemd:/\n4:memory:/x\n0::/system.slice/a.service\n";
        assert_eq!(cgroup_v2_path(hybrid), Some("/system.slice/a.service"));
        assert_eq!(cgroup_v2_path("0::/\n"), Some("/"));
        assert_eq!(cgroup_v2_path("4:memory:/x\n"), None);
    }

    #[test]
    fn the_cgroup2_mount_point_is_found_in_mountinfo() {
        let hybrid = "30 25 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro\n\
                      41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(
            cgroup2_mount(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let pure = "35 24 0:30 / /sys/fs/cgroup rw,nosuid shared:9 - cgroup2 cgroup2 rw\n";
        assert_eq!(cgroup2_mount(pure), Some(PathBuf::from("/sys/fs/cgroup")));
        assert_eq!(cgroup2_mount("1 2 0:1 / / rw - ext4 /dev/x rw\n"), None);
    }

    #[test]
    fn named_pods_show_namespace_pod_and_container() {
        let p = pod_uid_underscored();
        let mut a = Attribution::from_path(&format!(
            "/kubepods.slice/kubepods-pod{p}.slice/cri-containerd-{ID}.scope"
        ));
        assert_eq!(a.unnamed_pod(), Some((UID, Some(ID))));
        let names = |container: Option<&str>| PodNames {
            namespace: "shop".into(),
            pod: "cart-7d9f".into(),
            container: container.map(Into::into),
        };
        let mut by_id_only = a.clone();
        a.name_pod(names(Some("app")));
        assert_eq!(a.label(), "pod:shop/cart-7d9f/app");
        assert_eq!(a.unnamed_pod(), None, "named once");
        let json = serde_json::to_value(&a).expect("json");
        assert_eq!(json["workload"]["namespace"], "shop");
        assert_eq!(json["workload"]["pod"], "cart-7d9f");
        assert_eq!(json["workload"]["container"], "app");
        assert_eq!(json["workload"]["uid"], UID, "the uid stays");
        // The pod is known but not the container: its short id stands in.
        by_id_only.name_pod(names(None));
        assert_eq!(
            by_id_only.label(),
            format!("pod:shop/cart-7d9f/{}", &ID[..12])
        );
        // Not a pod: nothing to name, and naming changes nothing.
        let mut unit = Attribution::from_path("/system.slice/a.service");
        assert_eq!(unit.unnamed_pod(), None);
        unit.name_pod(names(Some("app")));
        assert_eq!(unit.label(), "systemd:a.service");
    }

    #[test]
    fn labels_name_the_workload_or_the_cgroup() {
        assert_eq!(
            Attribution::from_path(&format!("/system.slice/docker-{ID}.scope")).label(),
            format!("docker:{}", &ID[..12])
        );
        assert_eq!(Attribution::from_path("/").label(), "host");
        assert_eq!(Attribution::from_path("/x/y").label(), "cgroup:/x/y");
    }
    #[test]
    fn paths_from_a_private_cgroup_namespace_rebase_onto_the_hosts_tree() {
        let root = "/kubepods.slice/kubepods-besteffort.slice/pod1.slice/cri-containerd-a.scope";
        assert_eq!(
            rebase_cgroup_path(
                root,
                "/../../../kubepods-burstable.slice/pod2.slice/x.scope"
            )
            .as_deref(),
            Some("/kubepods.slice/kubepods-burstable.slice/pod2.slice/x.scope")
        );
        assert_eq!(rebase_cgroup_path(root, "/").as_deref(), Some(root));
        assert_eq!(
            rebase_cgroup_path("/", "/system.slice/db.service").as_deref(),
            Some("/system.slice/db.service")
        );
        assert_eq!(
            rebase_cgroup_path("/a", "/../../b"),
            None,
            "above the host's root"
        );
    }

    #[test]
    fn the_cgroup2_mounts_of_the_namespace_root_are_those_with_root_slash() {
        let mountinfo = "\
30 25 0:26 / /sys/fs/cgroup ro,nosuid - cgroup2 cgroup2 rw
31 25 0:26 /../../.. /host/sys/fs/cgroup ro,relatime - cgroup2 cgroup2 rw
32 25 0:27 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
";
        assert_eq!(
            cgroup2_ns_root_mounts(mountinfo),
            vec![PathBuf::from("/sys/fs/cgroup")]
        );
    }
}
