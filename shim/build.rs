//! Embeds the source revision for `-v` and Connect, and asks the linker for a build-id.

fn main() {
    // A GNU build-id note in the binary, whatever the linker's default: `-v` and
    // `sturdyctl status` tell builds apart by it (docs/upgrade.md).
    println!("cargo:rustc-link-arg-bins=-Wl,--build-id=sha1");
    println!("cargo:rerun-if-env-changed=STURDY_REVISION");
    println!("cargo:rerun-if-changed=../.git/HEAD");
    println!("cargo:rerun-if-changed=../.git/refs/heads");
    if std::env::var_os("STURDY_REVISION").is_some() {
        return;
    }
    let rev = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty());
    if let Some(rev) = rev {
        println!("cargo:rustc-env=STURDY_REVISION={rev}");
    }
}
