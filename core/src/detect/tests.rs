use crate::{
    engine::Engine,
    event::{Addr, Event, EventKind, LockType},
    exposure::{AddrKey, AddrKind, Exposure},
};

/// Stall alerts of a task waiting on a mutex and of one waiting on a userfaultfd, raised
/// under `exposure`, as JSON.
fn stalls(exposure: Exposure, lock: Addr, uffd: Addr) -> Vec<serde_json::Value> {
    let mut e = Engine::new(Default::default());
    e.set_exposure(exposure);
    let ev = |ts, tid, kind| Event {
        ts_ns: ts,
        tid,
        pid: tid,
        comm: None,
        kind,
    };
    let mut alerts = e.apply(&ev(
        0,
        3,
        EventKind::LockWaitBegin {
            lock,
            lock_type: LockType::Mutex,
            owner_tid: Some(1),
            mm: None,
        },
    ));
    alerts.extend(e.apply(&ev(
        1,
        4,
        EventKind::UffdWaitBegin {
            uffd,
            addr: Addr(0x7f12_3456_7000),
        },
    )));
    alerts.extend(e.apply(&ev(5_000_000_000, 0, EventKind::Snapshot {})));
    alerts
        .iter()
        .map(|a| serde_json::to_value(a).expect("JSON"))
        .collect()
}

#[test]
fn alerts_name_locks_by_the_ids_the_graph_uses() {
    let (lock, uffd) = (Addr(0xffff_8880_2222_0040), Addr(0xffff_8880_3333_0080));
    let ex = Exposure::Opaque(AddrKey::new([4; 16]));
    let (lock_id, uffd_id) = (
        ex.show(AddrKind::Lock, lock).to_string(),
        ex.show(AddrKind::Uffd, uffd).to_string(),
    );
    let opaque = stalls(ex, lock, uffd);
    assert_eq!(opaque.len(), 2, "{opaque:#?}");
    let text = serde_json::to_string(&opaque).expect("JSON");
    assert!(!text.contains("0x"), "{text}");
    assert!(
        text.contains(&format!("mutex {lock_id} owned by")),
        "{text}"
    );
    assert!(
        text.contains("userfaultfd fault at addr-") && text.contains(&format!("on {uffd_id};")),
        "{text}"
    );
    let locks: Vec<&serde_json::Value> = opaque.iter().map(|a| &a["locks"][0]).collect();
    assert!(
        locks.iter().any(|l| l["lock"] == lock_id.as_str()),
        "{text}"
    );
    assert!(
        locks.iter().any(|l| l["uffd"] == uffd_id.as_str()),
        "{text}"
    );

    let raw = serde_json::to_string(&stalls(Exposure::Raw, lock, uffd)).expect("JSON");
    assert!(raw.contains("mutex 0xffff888022220040"), "{raw}");
}
