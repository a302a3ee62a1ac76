//! Pod and container names on the node, without the API server. The kubelet keeps every pod's
//! container logs under `/var/log/pods/<namespace>_<pod>_<uid>/<container>/`, and most runtimes
//! also link `/var/log/containers/<pod>_<namespace>_<container>-<container id>.log` to them, so
//! a cgroup's pod uid gives the namespace and pod name, and its container id the container name.
//!
//! Splitting these names at `_` is exact: namespace and pod names are DNS-1123 names (lower-case
//! letters, digits, `-`, `.`), container names DNS-1123 labels, and the uid a UUID; none can
//! hold a `_`. A name that does not parse is skipped, never guessed.
//!
//! Both directories are listed at most once per `RELIST` and only when a lookup misses, so a
//! storm of records from a new pod costs one listing, not one per record.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Mutex, OnceLock},
    time::{Duration, Instant},
};

use faultline_core::workload::{Attribution, PodNames};

/// Where the kubelet keeps pod logs; overridden by this variable (tests, unusual nodes).
pub const PODS_DIR_ENV: &str = "FAULTLINE_PODS_LOG_DIR";
pub const PODS_DIR: &str = "/var/log/pods";
/// Where runtimes link container logs by container id; overridden by this variable.
pub const CONTAINERS_DIR_ENV: &str = "FAULTLINE_CONTAINERS_LOG_DIR";
pub const CONTAINERS_DIR: &str = "/var/log/containers";

/// Least time between two listings of the log directories.
const RELIST: Duration = Duration::from_secs(5);
/// Entries read per directory at most (a node runs at most a few hundred pods; this bounds a
/// pathological one).
const MAX_ENTRIES: usize = 16_384;

/// `<namespace>_<pod>_<uid>`, the name of a pod's directory under `/var/log/pods`.
#[derive(Debug, PartialEq, Eq)]
pub struct PodDir<'a> {
    pub namespace: &'a str,
    pub pod: &'a str,
    pub uid: &'a str,
}

pub fn parse_pod_dir(name: &str) -> Option<PodDir<'_>> {
    let mut parts = name.split('_');
    let (namespace, pod, uid) = (parts.next()?, parts.next()?, parts.next()?);
    (parts.next().is_none() && is_name(namespace) && is_name(pod) && is_uuid(uid)).then_some(
        PodDir {
            namespace,
            pod,
            uid,
        },
    )
}

/// `<pod>_<namespace>_<container>-<64 hex id>.log`, a link under `/var/log/containers`.
#[derive(Debug, PartialEq, Eq)]
pub struct ContainerLog<'a> {
    pub pod: &'a str,
    pub namespace: &'a str,
    pub container: &'a str,
    pub id: &'a str,
}

pub fn parse_container_log(name: &str) -> Option<ContainerLog<'_>> {
    let stem = name.strip_suffix(".log")?;
    let mut parts = stem.split('_');
    let (pod, namespace, rest) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    // Container names may hold `-`; the id never does, so it is after the last one.
    let (container, id) = rest.rsplit_once('-')?;
    (is_name(pod) && is_name(namespace) && is_name(container) && is_full_id(id)).then_some(
        ContainerLog {
            pod,
            namespace,
            container,
            id,
        },
    )
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.bytes().enumerate().all(|(i, b)| {
            matches!(i, 8 | 13 | 18 | 23) == (b == b'-') && (b == b'-' || b.is_ascii_hexdigit())
        })
}

fn is_full_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A container id in the target of a `/var/log/pods/.../<container>/N.log` link, as the
/// dockershim era left them: `/var/lib/docker/containers/<id>/<id>-json.log`.
fn id_in_link(target: &Path) -> Option<String> {
    target.components().find_map(|c| {
        let c = c.as_os_str().to_str()?;
        let head = c.get(..64)?;
        (is_full_id(head) && (c.len() == 64 || c.as_bytes().get(64) == Some(&b'-')))
            .then(|| head.to_ascii_lowercase())
    })
}

#[derive(Default)]
struct Listing {
    /// uid → (namespace, pod)
    pods: HashMap<String, (String, String)>,
    /// container id → (uid, container name)
    containers: HashMap<String, (String, String)>,
}

/// uid and container id → names, from the two log directories.
pub struct PodNamer {
    pods_dir: PathBuf,
    containers_dir: PathBuf,
    listing: Listing,
    listed: Option<Instant>,
}

impl PodNamer {
    pub fn new(pods_dir: impl Into<PathBuf>, containers_dir: impl Into<PathBuf>) -> Self {
        Self {
            pods_dir: pods_dir.into(),
            containers_dir: containers_dir.into(),
            listing: Listing::default(),
            listed: None,
        }
    }

    /// The names of pod `uid` (and of its container `container_id` when that one is known),
    /// listing the directories again on a miss when the last listing is old enough; `None`
    /// when the node does not name the pod (no log directory for it, or none mounted).
    pub fn names(&mut self, uid: &str, container_id: Option<&str>) -> Option<PodNames> {
        let known = |l: &Listing| {
            l.pods.contains_key(uid) && container_id.is_none_or(|id| l.containers.contains_key(id))
        };
        if !known(&self.listing) && self.listed.is_none_or(|t| t.elapsed() >= RELIST) {
            self.listing = self.list();
            self.listed = Some(Instant::now());
        }
        let (namespace, pod) = self.listing.pods.get(uid)?;
        // The id must belong to this pod: a log link of another pod names nothing here.
        let container = container_id
            .and_then(|id| self.listing.containers.get(id))
            .filter(|(owner, _)| owner == uid)
            .map(|(_, name)| name.clone());
        Some(PodNames {
            namespace: namespace.clone(),
            pod: pod.clone(),
            container,
        })
    }

    /// Names `a` when it is a pod whose names are still unknown and the node knows them.
    pub fn name(&mut self, a: &mut Attribution) {
        let Some((uid, id)) = a.unnamed_pod() else {
            return;
        };
        let (uid, id) = (uid.to_owned(), id.map(str::to_owned));
        if let Some(names) = self.names(&uid, id.as_deref()) {
            a.name_pod(names);
        }
    }

    fn list(&self) -> Listing {
        let mut listing = Listing::default();
        // (namespace, pod) → uid, to give the container links their pod's uid.
        let mut uid_of: HashMap<(String, String), String> = HashMap::new();
        for entry in read_dir(&self.pods_dir) {
            let name = entry.file_name();
            let Some(dir) = name.to_str().and_then(parse_pod_dir) else {
                continue;
            };
            let key = (dir.namespace.to_owned(), dir.pod.to_owned());
            uid_of.insert(key.clone(), dir.uid.to_owned());
            // Log files that are links into a runtime's per-container directory name the id.
            for container in read_dir(&entry.path()) {
                let Some(cname) = container.file_name().to_str().map(str::to_owned) else {
                    continue;
                };
                for log in read_dir(&container.path()) {
                    if let Some(id) = std::fs::read_link(log.path())
                        .ok()
                        .and_then(|t| id_in_link(&t))
                    {
                        listing
                            .containers
                            .insert(id, (dir.uid.to_owned(), cname.clone()));
                    }
                }
            }
            listing.pods.insert(dir.uid.to_owned(), key);
        }
        for entry in read_dir(&self.containers_dir) {
            let name = entry.file_name();
            let Some(log) = name.to_str().and_then(parse_container_log) else {
                continue;
            };
            let key = (log.namespace.to_owned(), log.pod.to_owned());
            if let Some(uid) = uid_of.get(&key) {
                listing.containers.insert(
                    log.id.to_ascii_lowercase(),
                    (uid.clone(), log.container.to_owned()),
                );
            }
        }
        listing
    }
}

/// A directory's entries, bounded; nothing for a directory that is missing or unreadable (a
/// node without the mounts names no pods, and says so once at start, not per lookup).
fn read_dir(dir: &Path) -> impl Iterator<Item = std::fs::DirEntry> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .take(MAX_ENTRIES)
}

/// The agent's namer, over the directories the environment names (the defaults otherwise).
pub fn shared() -> &'static Mutex<PodNamer> {
    static SHARED: OnceLock<Mutex<PodNamer>> = OnceLock::new();
    SHARED.get_or_init(|| {
        let dir = |var: &str, default: &str| {
            std::env::var_os(var)
                .filter(|v| !v.is_empty())
                .map_or_else(|| PathBuf::from(default), PathBuf::from)
        };
        Mutex::new(PodNamer::new(
            dir(PODS_DIR_ENV, PODS_DIR),
            dir(CONTAINERS_DIR_ENV, CONTAINERS_DIR),
        ))
    })
}

/// Names `a` with the shared namer (see [`PodNamer::name`]).
pub fn name(a: &mut Attribution) {
    if a.unnamed_pod().is_some() {
        shared().lock().unwrap_or_else(|e| e.into_inner()).name(a);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "0d3e6c2a-7b1f-4e59-9a8d-2c4b6e8f0a1c";
    const ID: &str = "4f1c9b0e7a2d8c6b5e3f1a0d9c8b7a6e5d4c3b2a1f0e9d8c7b6a5f4e3d2c1b0a";
    const ID2: &str = "aa1c9b0e7a2d8c6b5e3f1a0d9c8b7a6e5d4c3b2a1f0e9d8c7b6a5f4e3d2c1b0a";

    #[test]
    fn pod_directory_names_split_at_underscores() {
        assert_eq!(
            parse_pod_dir(&format!("kube-system_coredns-7db6d8ff4d-x2x9k_{UID}")),
            Some(PodDir {
                namespace: "kube-system",
                pod: "coredns-7db6d8ff4d-x2x9k",
                uid: UID
            })
        );
        // Dots are allowed in names; anything that is not namespace_pod_uuid is skipped.
        assert!(parse_pod_dir(&format!("a.b_c.d_{UID}")).is_some());
        assert_eq!(parse_pod_dir(&format!("ns_pod_extra_{UID}")), None);
        assert_eq!(parse_pod_dir("ns_pod_not-a-uid"), None);
        assert_eq!(parse_pod_dir(&format!("_pod_{UID}")), None);
        assert_eq!(parse_pod_dir(&format!("NS_pod_{UID}")), None);
    }

    #[test]
    fn container_links_name_the_container_by_its_id() {
        assert_eq!(
            parse_container_log(&format!("web-0_shop_istio-proxy-{ID}.log")),
            Some(ContainerLog {
                pod: "web-0",
                namespace: "shop",
                container: "istio-proxy",
                id: ID
            })
        );
        assert_eq!(parse_container_log(&format!("web-0_shop_app-{ID}")), None);
        assert_eq!(parse_container_log("web-0_shop_app-abc.log"), None);
        assert_eq!(parse_container_log(&format!("web-0_app-{ID}.log")), None);
    }

    #[test]
    fn ids_are_found_in_dockershim_style_link_targets() {
        let t = format!("/var/lib/docker/containers/{ID}/{ID}-json.log");
        assert_eq!(id_in_link(Path::new(&t)), Some(ID.to_owned()));
        assert_eq!(id_in_link(Path::new("/var/lib/x/0.log")), None);
    }

    fn symlink(target: impl AsRef<Path>, link: impl AsRef<Path>) {
        std::os::unix::fs::symlink(target, link).expect("symlink");
    }

    #[test]
    fn a_node_tree_names_pods_and_containers_and_only_its_own() {
        let root = tempfile::tempdir().expect("tempdir");
        let (pods, containers) = (root.path().join("pods"), root.path().join("containers"));
        let app = pods.join(format!("shop_cart-7d9f_{UID}/app"));
        std::fs::create_dir_all(&app).expect("dirs");
        std::fs::create_dir_all(&containers).expect("dirs");
        std::fs::write(app.join("0.log"), "").expect("log");
        symlink(
            app.join("0.log"),
            containers.join(format!("cart-7d9f_shop_app-{ID}.log")),
        );
        // A link of a pod this node does not have names nothing.
        symlink(
            "/nowhere",
            containers.join(format!("other_shop_app-{ID2}.log")),
        );
        let mut n = PodNamer::new(&pods, &containers);
        let names = n.names(UID, Some(ID)).expect("the pod is named");
        assert_eq!(names.to_string(), "shop/cart-7d9f/app");
        let unknown_container = n.names(UID, Some(ID2)).expect("still the pod");
        assert_eq!(unknown_container.container, None);
        assert_eq!(
            n.names(UID, None).map(|p| p.to_string()).as_deref(),
            Some("shop/cart-7d9f")
        );
        assert_eq!(
            n.names("11111111-2222-3333-4444-555555555555", Some(ID)),
            None
        );

        // A pod that appears later is found once the relist delay has passed, not before.
        let late = "99999999-7b1f-4e59-9a8d-2c4b6e8f0a1c";
        let db = pods.join(format!("shop_db-0_{late}/postgres"));
        std::fs::create_dir_all(&db).expect("dirs");
        // The dockershim layout: no /var/log/containers link, the log links to the runtime's.
        symlink(
            format!("/var/lib/docker/containers/{ID2}/{ID2}-json.log"),
            db.join("0.log"),
        );
        assert_eq!(n.names(late, Some(ID2)), None, "within the relist delay");
        n.listed = Some(Instant::now() - RELIST);
        let db_names = n.names(late, Some(ID2)).expect("after the delay");
        assert_eq!(db_names.to_string(), "shop/db-0/postgres");
    }

    #[test]
    fn without_the_directories_nothing_is_named() {
        let mut n = PodNamer::new("/nonexistent/pods", "/nonexistent/containers");
        assert_eq!(n.names(UID, Some(ID)), None);
    }
}
