//! Rebuild the programs when the linker changes: cargo does not know about `bpf-linker`, which
//! `tracer/build.rs` drives through aya-build.
fn main() {
    match which::which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(err) => {
            println!("cargo:warning=bpf-linker not found on PATH ({err}); run `cargo xtask setup`")
        }
    }
}
