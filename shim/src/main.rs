//! `containerd-shim-sturdy-v2` binary.

fn main() {
    sturdy_shim::memory::random_access_binary();
    sturdy_shim::memory::single_arena();
    std::process::exit(sturdy_shim::bootstrap::main());
}
