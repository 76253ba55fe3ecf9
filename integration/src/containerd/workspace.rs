//! Where this workspace and the binaries cargo built in it are.

use std::path::{Path, PathBuf};

use super::SHIM_BINARY;

/// Root of the cargo workspace this crate was built in.
pub fn workspace_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Cargo's target directory: `$CARGO_TARGET_DIR`, else `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_dir().join("target"))
}

/// Where the sturdy shim is taken from when the builder is not told: `STURDY_SHIM_BIN`, else
/// the debug build in [`target_dir`].
pub fn default_shim_bin() -> PathBuf {
    std::env::var_os("STURDY_SHIM_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("debug").join(SHIM_BINARY))
}

/// Where `sturdyctl` is taken from: `STURDYCTL_BIN`, else the debug build in
/// [`target_dir`]. Panics, saying how to build it, if it is not there: every caller is
/// about to run it.
pub fn sturdyctl_bin() -> PathBuf {
    let bin = std::env::var_os("STURDYCTL_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("debug").join("sturdyctl"));
    assert!(
        bin.is_file(),
        "{} is missing: run `cargo build -p sturdyctl` first",
        bin.display()
    );
    bin
}
