//! A user namespace holding a mount's id mappings, as an open fd.
//!
//! mount_setattr(MOUNT_ATTR_IDMAP) reads the mappings from a user namespace, and a user
//! namespace can only be made with a process in it: a child is cloned into a new one, its
//! `uid_map`/`gid_map` are written, the namespace is opened through /proc, and the child
//! is let go. The fd keeps the namespace alive after the child is gone.
//!
//! The reaper is held from the clone until the namespace is open, so the child cannot be
//! collected and its pid reused while /proc/PID is written to: a child that died early
//! stays a zombie. The child only waits for EOF on a pipe (the parent closes it, or it
//! closes with the shim) and exits; the reaper collects it like any other child.

use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd};

use nix::fcntl::OFlag;
use nix::sched::CloneFlags;
use runc_client::Reaper;

use super::idmap::{proc_map, IdMaps};

/// The child only calls close, read and exit.
const CHILD_STACK: usize = 64 << 10;

/// Which step of making the namespace failed.
#[derive(Debug)]
pub(super) struct UsernsError {
    pub step: &'static str,
    pub source: io::Error,
}

/// The step name of the clone, which fails when the kernel has no user namespaces or
/// their limit is reached.
pub(super) const CLONE_STEP: &str = "clone a user namespace";

/// Creates a user namespace with `maps` and returns it open.
pub(super) fn create(maps: &IdMaps, reaper: &Reaper) -> Result<OwnedFd, UsernsError> {
    create_with_child(maps, reaper).map(|(ns, _)| ns)
}

/// [`create`], also returning the pid of the child that made the namespace.
fn create_with_child(maps: &IdMaps, reaper: &Reaper) -> Result<(OwnedFd, i32), UsernsError> {
    let fail = |step: &'static str| move |source: io::Error| UsernsError { step, source };
    // Everything the child touches exists before the clone.
    let uid_map = proc_map(&maps.uid);
    let gid_map = proc_map(&maps.gid);
    let mut stack = vec![0u8; CHILD_STACK];
    let (wait_r, wait_w) =
        nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| fail("pipe")(e.into()))?;
    let (r, w) = (wait_r.as_raw_fd(), wait_w.as_raw_fd());
    let child = Box::new(move || {
        // SAFETY: close and read on fds this copy of the process owns; async-signal-safe.
        unsafe {
            libc::close(w);
            let mut byte = 0u8;
            while libc::read(r, (&mut byte as *mut u8).cast(), 1) < 0
                && nix::errno::Errno::last_raw() == libc::EINTR
            {}
        }
        0
    });

    let hold = reaper.hold();
    // SAFETY: the child runs only the closure above (close, read) on its own stack and
    // exits when it returns; it never unwinds or allocates.
    let pid = unsafe {
        nix::sched::clone(
            child,
            &mut stack,
            CloneFlags::CLONE_NEWUSER,
            Some(libc::SIGCHLD),
        )
    }
    .map_err(|e| fail(CLONE_STEP)(e.into()))?;
    Reaper::notify_spawned();
    drop(wait_r);

    let proc = format!("/proc/{pid}");
    let write_once = |file: &str, text: &str| -> io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(format!("{proc}/{file}"))?;
        // The kernel takes a map in exactly one write.
        let n = f.write(text.as_bytes())?;
        if n != text.len() {
            return Err(io::Error::other(format!(
                "short write to {file}: {n} of {} bytes",
                text.len()
            )));
        }
        Ok(())
    };
    let result = write_once("setgroups", "deny")
        .map_err(fail("write setgroups"))
        .and_then(|()| write_once("uid_map", &uid_map).map_err(fail("write uid_map")))
        .and_then(|()| write_once("gid_map", &gid_map).map_err(fail("write gid_map")))
        .and_then(|()| {
            std::fs::File::open(format!("{proc}/ns/user"))
                .map(OwnedFd::from)
                .map_err(fail("open the user namespace"))
        });
    // EOF lets the child exit; only then may the reaper collect it.
    drop(wait_w);
    drop(hold);
    result.map(|ns| (ns, pid.as_raw()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mount::idmap::Range;

    /// The namespace is a new one, and the child that made it is collected once released.
    #[test]
    fn a_new_namespace_and_no_child_left() {
        let one = |host| Range {
            container: 0,
            host,
            size: 65536,
        };
        let maps = IdMaps {
            uid: vec![one(100000)],
            gid: vec![one(200000)],
        };
        let reaper = Reaper::global();
        let mut exits = reaper.subscribe();
        let (ns, pid) = match create_with_child(&maps, &reaper) {
            Ok(made) => made,
            Err(e) if e.step == CLONE_STEP => {
                test_skip::skip!("no user namespaces here: {}", e.source)
            }
            Err(e) => panic!("{}: {}", e.step, e.source),
        };
        let ours = std::fs::metadata("/proc/self/ns/user").unwrap();
        let made = std::fs::metadata(format!("/proc/self/fd/{}", ns.as_raw_fd())).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_ne!(ours.ino(), made.ino(), "not a new user namespace");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let exit = rt.block_on(async {
            tokio::time::timeout(std::time::Duration::from_secs(10), exits.wait_for(pid)).await
        });
        assert_eq!(exit.expect("the child was not collected").status, 0);
    }

    /// A map the kernel refuses fails at its write, named.
    #[test]
    fn a_refused_map_names_the_write() {
        // Two ranges overlapping on the host side: parse_list refuses them, the kernel too.
        let r = |container| Range {
            container,
            host: 100000,
            size: 10,
        };
        let maps = IdMaps {
            uid: vec![r(0), r(5)],
            gid: vec![r(0)],
        };
        match create(&maps, &Reaper::global()) {
            Err(e) if e.step == CLONE_STEP => {
                test_skip::skip!("no user namespaces here: {}", e.source)
            }
            Err(e) => assert_eq!(e.step, "write uid_map", "{}", e.source),
            Ok(_) => panic!("an overlapping map was accepted"),
        }
    }
}
