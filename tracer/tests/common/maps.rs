//! The entries of a running agent's kernel maps, counted from the kernel itself (bpf(2) on the
//! maps the agent holds open), not from the agent's own metrics: a map the agent forgets to
//! prune, or reports wrongly, shows here.

use std::collections::BTreeMap;

const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
const BPF_MAP_GET_FD_BY_ID: libc::c_long = 14;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;

/// Hash map types (plain, per-CPU, LRU, LRU per-CPU): the ones whose entries come and go.
const HASH_TYPES: [u32; 4] = [1, 5, 9, 10];

/// What bpf(2) says of one map.
#[derive(Clone, Debug)]
pub struct MapCount {
    pub max_entries: u32,
    /// Entries found walking its keys (a hash map); `None` for arrays and ring buffers.
    pub entries: Option<u64>,
}

fn bpf(cmd: libc::c_long, attr: &mut [u8]) -> i64 {
    // SAFETY: bpf(2) with an attr buffer of the size passed; pointers inside it point to live
    // buffers of the sizes the command reads or writes.
    unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len()) }
}

/// The map ids among the open descriptors of process `pid` (`map_id:` in fdinfo).
fn map_ids(pid: u32) -> Vec<u32> {
    let mut ids: Vec<u32> = std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("map_id:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Counts of every map process `pid` holds, by the map's kernel name (the first 15 bytes of
/// the name in the object, e.g. `TASK_STATE`).
pub fn map_counts(pid: u32) -> BTreeMap<String, MapCount> {
    let mut out = BTreeMap::new();
    for id in map_ids(pid) {
        let mut attr = [0u8; 128];
        attr[..4].copy_from_slice(&id.to_ne_bytes());
        let fd = bpf(BPF_MAP_GET_FD_BY_ID, &mut attr);
        if fd < 0 {
            continue; // gone since fdinfo was read
        }
        let fd = fd as u32;
        // struct bpf_map_info: type, id, key_size, value_size, max_entries, map_flags (u32
        // each), then name[16].
        let mut info = [0u8; 88];
        let mut attr = [0u8; 128];
        attr[..4].copy_from_slice(&fd.to_ne_bytes());
        attr[4..8].copy_from_slice(&(info.len() as u32).to_ne_bytes());
        attr[8..16].copy_from_slice(&(info.as_mut_ptr() as u64).to_ne_bytes());
        if bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr) == 0 {
            let u32_at =
                |o: usize| u32::from_ne_bytes([info[o], info[o + 1], info[o + 2], info[o + 3]]);
            let (map_type, key_size, max_entries) = (u32_at(0), u32_at(8), u32_at(16));
            let name: String = info[24..40]
                .iter()
                .take_while(|b| **b != 0)
                .map(|b| *b as char)
                .collect();
            let entries = HASH_TYPES
                .contains(&map_type)
                .then(|| count_keys(fd, key_size as usize, max_entries));
            out.insert(
                name,
                MapCount {
                    max_entries,
                    entries,
                },
            );
        }
        // SAFETY: closing the descriptor bpf(2) just gave us.
        unsafe { libc::close(fd as i32) };
    }
    out
}

/// Walks a hash map's keys (BPF_MAP_GET_NEXT_KEY). Entries deleted meanwhile may restart the
/// walk, so it stops after `max_entries` keys: the count is then the capacity, which is what a
/// leak would show anyway.
fn count_keys(fd: u32, key_size: usize, max_entries: u32) -> u64 {
    let mut key = vec![0u8; key_size.max(1)];
    let mut next = vec![0u8; key_size.max(1)];
    let mut n = 0u64;
    let mut first = true;
    while n < u64::from(max_entries) {
        let mut attr = [0u8; 128];
        attr[..4].copy_from_slice(&fd.to_ne_bytes());
        let key_ptr = if first { 0 } else { key.as_mut_ptr() as u64 };
        attr[8..16].copy_from_slice(&key_ptr.to_ne_bytes());
        attr[16..24].copy_from_slice(&(next.as_mut_ptr() as u64).to_ne_bytes());
        if bpf(BPF_MAP_GET_NEXT_KEY, &mut attr) != 0 {
            break; // ENOENT: the last key
        }
        first = false;
        n += 1;
        std::mem::swap(&mut key, &mut next);
    }
    n
}
