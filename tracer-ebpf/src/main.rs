//! faultline's kernel side: one module per probe family, each with its entry points, its own
//! maps and the cleanup of those maps, over shared helpers (`maps`: shared maps, counting,
//! histograms, output; `task`: per-task state and what a task or mm pointer names).
//!
//! Families and who depends on whom (no cycles): `lock_profile` ← `contention` ← `faults` ← `mmap_lock`,
//! `faults` ← `uffd`, `sched` (the scheduler hooks) → `uffd`, `futex`, and `exit` calls each family's cleanup. `diag` holds the diagnose
//! iterators and `floor` the benchmark's empty programs; they share nothing.
//!
//! Cost model (see docs/design.md): the default mode attaches nothing on the uncontended
//! `mmap_lock` path. Contention, kernel-mode faults, userfaultfd and exits are slow paths; the
//! `mmap_lock` and user-fault hooks are attached only in the heavier modes. Every entry point
//! calls a handler returning `Result<(), Counter>`, and `maps::finish` counts the error once.
#![no_std]
#![no_main]

mod contention;
mod diag;
mod exit;
mod faults;
mod floor;
mod futex;
mod lock_profile;
mod maps;
mod mmap_lock;
mod sched;
mod task;
mod uffd;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 4] = *b"GPL\0";
