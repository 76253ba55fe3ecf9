//! `containerd-shim-sturdy-v2` binary.

fn main() {
    std::process::exit(sturdy_shim::bootstrap::main());
}
