//! Wire types shared by faultline's eBPF programs and its user space.
//!
//! Everything here is `#[repr(C)]` with explicit padding and a size assertion, so the kernel side
//! and user space agree on layout without a serialisation step. User space converts these once,
//! at the edge, into its own domain `Event`; nothing past the decoder sees these types.
//!
//! By topic: `event` (ring-buffer records), `state` (per-task and per-CPU kernel state),
//! `config` (what the loader tells the programs), `stats` (counters and histograms), `diag`
//! (diagnose iterators), `profile` (the in-kernel lock-contention profile), `lock` and `uffd` (lock types, userfaultfd ops), `futex` (user-space lock waits), `names` (map and
//! program names and capacities both sides use).
#![no_std]

pub mod config;
pub mod diag;
pub mod event;
pub mod futex;
pub mod lock;
pub mod names;
pub mod profile;
pub mod state;
pub mod stats;
pub mod uffd;

pub use config::*;
pub use diag::*;
pub use event::*;
pub use futex::*;
pub use lock::*;
pub use profile::*;
pub use state::*;
pub use stats::*;
pub use uffd::*;

#[cfg(feature = "user")]
mod user {
    use super::*;
    // SAFETY: all of these are repr(C), made only of integers and integer arrays, and have no
    // implicit padding (checked by the size assertions next to each type).
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for KernelOffsets {}
    unsafe impl aya::Pod for TracepointLayout {}
    unsafe impl aya::Pod for TaskState {}
    unsafe impl aya::Pod for Hold {}
    unsafe impl aya::Pod for SyscallLayout {}
    unsafe impl aya::Pod for ProcFaults {}
    unsafe impl aya::Pod for DiagOffsets {}
    unsafe impl aya::Pod for FdKey {}
    unsafe impl aya::Pod for UffdHandlerKey {}
    unsafe impl aya::Pod for ProfileKey {}
    unsafe impl aya::Pod for ProfileValue {}
    unsafe impl aya::Pod for ProfilePending {}
    unsafe impl aya::Pod for StackFrames {}
    unsafe impl aya::Pod for FutexWait {}
    unsafe impl aya::Pod for FutexTime {}
    unsafe impl aya::Pod for FutexStack {}
    unsafe impl aya::Pod for FutexProfileKey {}
    unsafe impl aya::Pod for FutexProfileValue {}
}
