//! Names of user-space addresses: the ELF data symbol that covers an address of a process
//! (a global `pthread_mutex_t`, say), or the file and offset it lies at. Used to name user
//! locks without showing their address (which would give away the process's layout).
//!
//! Read from `/proc/PID/maps` and the mapped file through `/proc/PID/root` (so a container's
//! files are its own), with lazy reads (`object`'s `ReadCache`): a large binary is not read
//! whole. Parsed tables are cached by path, a few at a time.

use std::{
    collections::HashMap,
    fs::File,
    sync::{Arc, Mutex, OnceLock},
};

// `segments()` of an ELF file yields its PT_LOAD segments only.
use object::{read::ReadCache, Object as _, ObjectSegment as _, ObjectSymbol as _, SymbolKind};

/// One file's data symbols (start, size, name) by start, and its loadable segments (file
/// offset, virtual address, size in memory).
struct Image {
    symbols: Vec<(u64, u64, String)>,
    segments: Vec<(u64, u64, u64)>,
}

/// Parsed files kept at once.
const CACHE_FILES: usize = 32;

fn cache() -> &'static Mutex<HashMap<String, Option<Arc<Image>>>> {
    static CACHE: OnceLock<Mutex<HashMap<String, Option<Arc<Image>>>>> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

fn image(pid: u32, path: &str) -> Option<Arc<Image>> {
    let key = format!("{pid}:{path}");
    let mut c = cache().lock().unwrap_or_else(|p| p.into_inner());
    if let Some(hit) = c.get(&key) {
        return hit.clone();
    }
    let parsed = parse(&format!("/proc/{pid}/root{path}")).map(Arc::new);
    if c.len() >= CACHE_FILES {
        c.clear();
    }
    c.insert(key, parsed.clone());
    parsed
}

fn parse(path: &str) -> Option<Image> {
    let file = File::open(path).ok()?;
    let cache = ReadCache::new(file);
    let obj = object::File::parse(&cache).ok()?;
    let mut symbols: Vec<(u64, u64, String)> = obj
        .symbols()
        .chain(obj.dynamic_symbols())
        .filter(|s| matches!(s.kind(), SymbolKind::Data) && s.is_definition())
        .filter_map(|s| Some((s.address(), s.size(), s.name().ok()?.to_owned())))
        .filter(|(_, _, n)| !n.is_empty())
        .collect();
    symbols.sort();
    symbols.dedup_by_key(|s| s.0);
    let segments = obj
        .segments()
        .map(|s| (s.file_range().0, s.address(), s.size()))
        .collect();
    Some(Image { symbols, segments })
}

/// One line of /proc/PID/maps.
struct Mapping {
    start: u64,
    end: u64,
    offset: u64,
    path: Option<String>,
}

fn mappings(pid: u32) -> Option<Vec<Mapping>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
    Some(
        text.lines()
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                let (range, _perms, offset) = (f.next()?, f.next()?, f.next()?);
                let (_dev, _inode) = (f.next()?, f.next()?);
                let path = f.next().filter(|p| p.starts_with('/')).map(str::to_owned);
                let (a, b) = range.split_once('-')?;
                Some(Mapping {
                    start: u64::from_str_radix(a, 16).ok()?,
                    end: u64::from_str_radix(b, 16).ok()?,
                    offset: u64::from_str_radix(offset, 16).ok()?,
                    path,
                })
            })
            .collect(),
    )
}

/// The name of `addr` in process `pid`: `SYMBOL` or `SYMBOL+0xN` when a data symbol covers
/// it, else `FILE+0xVADDR`; `None` when it is not in a mapped file's image (heap, stack), or
/// the process's maps could not be read in time (`user_mem`: reading them takes its
/// `mmap_lock`).
pub fn name_of(pid: u32, addr: u64) -> Option<String> {
    if crate::kernel::user_mem::contended(pid) {
        return None; // named later, once its mmap_lock has no waiters (`user_mem`)
    }
    crate::kernel::user_mem::bounded(
        crate::kernel::user_mem::Lane::Reads,
        crate::kernel::user_mem::READ_DEADLINE,
        move || name_now(pid, addr),
    )
    .flatten()
}

/// `name_of` without the deadline: for callers already on the `user_mem` worker.
pub fn name_now(pid: u32, addr: u64) -> Option<String> {
    let maps = mappings(pid)?;
    // The file whose image holds it: the mapping itself, or for .bss (an anonymous mapping
    // right after the file's data) the nearest file mapping below it.
    let idx = maps.iter().position(|m| m.start <= addr && addr < m.end)?;
    let file_map = maps[..=idx].iter().rev().find(|m| m.path.is_some())?;
    let path = file_map.path.as_deref()?;
    let img = image(pid, path)?;
    // The load bias: where the file's first mapping (offset 0) sits, less the virtual address
    // its first segment gives that offset.
    let first = maps
        .iter()
        .find(|m| m.path.as_deref() == Some(path) && m.offset == 0)?;
    let (off0, vaddr0, _) = *img.segments.iter().min_by_key(|s| s.0)?;
    let bias = first.start.wrapping_sub(vaddr0.wrapping_sub(off0));
    let vaddr = addr.wrapping_sub(bias);
    if !img
        .segments
        .iter()
        .any(|&(_, va, size)| va <= vaddr && vaddr < va + size)
    {
        return None;
    }
    let at = img.symbols.partition_point(|s| s.0 <= vaddr);
    if let Some((start, size, name)) = at.checked_sub(1).map(|i| &img.symbols[i]) {
        if vaddr < start + (*size).max(1) {
            return Some(if vaddr == *start {
                name.clone()
            } else {
                format!("{name}+{:#x}", vaddr - start)
            });
        }
    }
    let base = path.rsplit('/').next().unwrap_or(path);
    Some(format!("{base}+{vaddr:#x}"))
}
