//! Exact kernel state for diagnose, read once with BPF iterators: task blockers (mutex, rwsem,
//! semaphore, with owners), every mmap_lock wait queue in order, and every userfaultfd
//! context with its mm and the tasks waiting on it. The iterators load and run through the
//! probes' own code (`kernel::probes::families::diag`).

pub use crate::kernel::probes::families::diag::read_kernel_state;
