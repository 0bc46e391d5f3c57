use which::which;

/// The object must be rebuilt when bpf-linker changes (for example after
/// `cargo xtask setup` rebuilt it against another LLVM).
fn main() {
    if let Ok(linker) = which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
