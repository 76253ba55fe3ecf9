use std::os::unix::fs::{symlink, PermissionsExt};
use std::process::{Command, Stdio};

use super::*;
use crate::testing::wait_for;

const NOBODY: u32 = 65534;

/// A scratch directory only root can change (/tmp is world-writable, so nothing under it
/// could ever be trusted). The suite runs as root, which owns /run.
fn scratch() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("sturdy-trust-")
        .tempdir_in("/run")
        .expect("a scratch dir in /run (the tests run as root)");
    directory(dir.path()).expect("the scratch dir is trusted");
    dir
}

fn script(path: &Path, mode: u32) {
    std::fs::write(path, "#!/bin/sh\nexit 0\n").unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn chown(path: &Path, uid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), None).unwrap();
}

#[test]
fn a_root_binary_in_root_directories_is_trusted() {
    let dir = scratch();
    let bin = dir.path().join("shim");
    script(&bin, 0o755);
    assert_eq!(executable(&bin).unwrap(), bin);
    assert!(executable(Path::new("/bin/sh")).is_ok(), "a system binary");
}

#[test]
fn a_binary_another_user_owns_or_may_write_is_not() {
    let dir = scratch();
    let bin = dir.path().join("shim");
    script(&bin, 0o755);
    chown(&bin, NOBODY);
    assert!(matches!(
        executable(&bin),
        Err(Untrusted::Owner { uid: NOBODY, .. })
    ));
    chown(&bin, 0);
    for mode in [0o775, 0o757] {
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(mode)).unwrap();
        assert!(matches!(executable(&bin), Err(Untrusted::Writable { .. })));
    }
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert!(
        matches!(executable(&bin), Err(Untrusted::Kind { .. })),
        "no x bit"
    );
    assert!(matches!(
        executable(Path::new("relative/shim")),
        Err(Untrusted::Relative(_))
    ));
}

#[test]
fn a_directory_on_the_way_that_others_may_change_makes_it_untrusted() {
    let dir = scratch();
    let sub = dir.path().join("bin");
    std::fs::create_dir(&sub).unwrap();
    let bin = sub.join("shim");
    script(&bin, 0o755);
    chown(&sub, NOBODY);
    assert!(matches!(executable(&bin), Err(Untrusted::Owner { .. })));
    chown(&sub, 0);
    std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(0o1777)).unwrap();
    assert!(matches!(executable(&bin), Err(Untrusted::Writable { .. })));
    // /tmp itself: world-writable, so nothing under it is trusted.
    let tmp = tempfile::tempdir().unwrap();
    let in_tmp = tmp.path().join("shim");
    script(&in_tmp, 0o755);
    assert!(executable(&in_tmp).is_err());
    assert!(find_executable([tmp.path()], "shim").is_none());
}

#[test]
fn symlinks_are_followed_and_checked_where_they_lead() {
    let dir = scratch();
    let bin = dir.path().join("real");
    script(&bin, 0o755);
    let link = dir.path().join("link");
    symlink(&bin, &link).unwrap();
    assert_eq!(executable(&link).unwrap(), bin);
    // A link to a user's binary, or a link a user owns, is not trusted.
    let tmp = tempfile::tempdir().unwrap();
    let evil = tmp.path().join("evil");
    script(&evil, 0o755);
    let to_evil = dir.path().join("to-evil");
    symlink(&evil, &to_evil).unwrap();
    assert!(executable(&to_evil).is_err());
    let owned = dir.path().join("owned-link");
    symlink(&bin, &owned).unwrap();
    chown(&owned, NOBODY);
    assert!(matches!(executable(&owned), Err(Untrusted::Owner { .. })));
    // Relative links and `..` resolve against where they lie.
    let rel = dir.path().join("rel");
    symlink("sub/../real", &rel).unwrap();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    assert_eq!(executable(&rel).unwrap(), bin);
    let a = dir.path().join("a");
    let b = dir.path().join("b");
    symlink(&b, &a).unwrap();
    symlink(&a, &b).unwrap();
    assert!(matches!(executable(&a), Err(Untrusted::Loop(_))));
}

#[test]
fn find_executable_skips_untrusted_directories() {
    let dir = scratch();
    let good = dir.path().join("good");
    std::fs::create_dir(&good).unwrap();
    script(&good.join("tool"), 0o755);
    let tmp = tempfile::tempdir().unwrap();
    script(&tmp.path().join("tool"), 0o755);
    let found = find_executable([tmp.path(), good.as_path()], "tool");
    assert_eq!(found, Some(good.join("tool")));
    assert_eq!(find_executable([Path::new("rel")], "tool"), None);
}

#[test]
fn uids_from_status() {
    let status = "Name:\tx\nUid:\t65534\t0\t0\t0\nGid:\t0\t0\t0\t0\n";
    assert_eq!(parse_uids(status), Some((65534, 0)));
    assert_eq!(parse_uids("Name:\tx\n"), None);
}

/// Runs `bin` (a copy of `sleep`) as `uid`; killed and reaped on drop.
struct Sleeper(std::process::Child);

impl Sleeper {
    fn start(bin: &Path, uid: u32) -> Sleeper {
        use std::os::unix::process::CommandExt;
        let child = Command::new(bin)
            .arg("300")
            .uid(uid)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        // The exec has happened once /proc shows the new image.
        let pid = child.id();
        let exe = PathBuf::from(format!("/proc/{pid}/exe"));
        let ran = || std::fs::read_link(&exe).ok().as_deref() == Some(bin);
        assert!(
            wait_for(std::time::Duration::from_secs(10), ran),
            "{bin:?} never ran"
        );
        Sleeper(child)
    }
    fn pid(&self) -> i32 {
        self.0.id() as i32
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_process_is_trusted_only_as_root_from_a_trusted_binary() {
    let dir = scratch();
    let sleep = dir.path().join("sleep");
    std::fs::copy("/bin/sleep", &sleep).unwrap();
    std::fs::set_permissions(&sleep, std::fs::Permissions::from_mode(0o755)).unwrap();
    let root = Sleeper::start(&sleep, 0);
    assert_eq!(process(root.pid()), Ok(()));
    let nobody = Sleeper::start(&sleep, NOBODY);
    assert!(matches!(
        process(nobody.pid()),
        Err(Untrusted::NotRoot { uid: NOBODY, .. })
    ));
    // Root running a binary a user may replace.
    let tmp = tempfile::tempdir().unwrap();
    let user_sleep = tmp.path().join("sleep");
    std::fs::copy("/bin/sleep", &user_sleep).unwrap();
    std::fs::set_permissions(&user_sleep, std::fs::Permissions::from_mode(0o755)).unwrap();
    let from_tmp = Sleeper::start(&user_sleep, 0);
    assert!(matches!(
        process(from_tmp.pid()),
        Err(Untrusted::Writable { .. })
    ));
    chown(&user_sleep, NOBODY);
    assert!(matches!(
        process(from_tmp.pid()),
        Err(Untrusted::Owner { uid: NOBODY, .. })
    ));
    // A trusted binary replaced after it started: what runs is still root's image.
    std::fs::remove_file(&sleep).unwrap();
    assert_eq!(process(root.pid()), Ok(()));
    assert!(process(i32::MAX).is_err(), "no such process");
}
