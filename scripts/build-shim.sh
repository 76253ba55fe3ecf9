#!/usr/bin/env bash
# Build the production shim: release profile, statically linked against glibc.
# Static linking keeps libc, libm and the loader out of every shim's resident set (one shim
# runs per pod) and leaves the binary without runtime dependencies for node installs.
# Prints the path of the binary on the last line.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -x "$HOME/.cargo/bin/cargo" ]; then export PATH="$HOME/.cargo/bin:$PATH"; fi
host="$(rustc -vV | sed -n 's/^host: //p')"
# With an explicit --target, RUSTFLAGS reach only the target crates, not build scripts or
# proc macros (which cannot be built with crt-static).
# panic = abort only here (see the release profile in Cargo.toml).
RUSTFLAGS="-C target-feature=+crt-static" CARGO_PROFILE_RELEASE_PANIC=abort \
  cargo build --locked --release -p sturdy-shim --target "$host" >&2
echo "$PWD/target/$host/release/containerd-shim-sturdy-v2"
