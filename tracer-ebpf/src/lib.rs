//! Library shell so `tracer` can name this crate as a build dependency (rebuilds on change);
//! the programs are in the `tracer` binary target.
#![no_std]
