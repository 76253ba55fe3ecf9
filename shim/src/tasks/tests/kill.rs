//! Kill of an exec whose pid was freed and taken again before the shim learned of its exit.

use super::*;
use std::os::fd::AsFd;

use runc_client::Pidfd;

/// A process of ours holding a chosen pid, killed on drop.
struct Decoy {
    pid: i32,
    pidfd: Pidfd,
}

impl Decoy {
    /// Starts `sleep` as pid `want` by setting the pid namespace's last pid just before the
    /// fork (root only). Other forks on the host may get there first: try a few times.
    fn take(want: i32) -> std::result::Result<Decoy, String> {
        for _ in 0..200 {
            std::fs::write("/proc/sys/kernel/ns_last_pid", (want - 1).to_string())
                .map_err(|e| format!("cannot steer pids (ns_last_pid): {e}"))?;
            let mut cmd = std::process::Command::new("sleep");
            cmd.arg("60");
            let (pid, pidfd) = Reaper::global()
                .spawn_with_pidfd(cmd)
                .map_err(|e| format!("spawn sleep: {e}"))?;
            let decoy = Decoy { pid, pidfd };
            if pid == want {
                return Ok(decoy);
            }
        }
        Err(format!("another process always took pid {want} first"))
    }

    fn alive(&self) -> bool {
        let mut fds = [nix::poll::PollFd::new(
            self.pidfd.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO).unwrap() == 0
    }
}

impl Drop for Decoy {
    fn drop(&mut self) {
        let _ = self.pidfd.signal(libc::SIGKILL);
    }
}

/// The exec dies and is reaped, and a new process gets its pid before the shim's exit
/// dispatch ran (it lags under load; here it cannot run because the test never yields).
/// A Kill of the exec then must not reach the newcomer: it is answered "already finished".
#[tokio::test]
async fn an_exec_kill_never_reaches_the_process_that_reused_its_pid() {
    let rig = Rig::new();
    rig.create("c", &[]).await.unwrap();
    rig.tasks.start("c", "").await.unwrap();
    rig.tasks.exec("c", "e", SPEC, Default::default()).unwrap();
    let pid = rig.tasks.start("c", "e").await.unwrap();

    // From here until the Kill nothing awaits on this runtime, so the exec stays Running.
    let mut exits = Reaper::global().subscribe();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let reaped = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
            .block_on(async { tokio::time::timeout(T, exits.wait_for(pid)).await })
            .is_ok()
    })
    .join()
    .unwrap();
    assert!(reaped, "the exec's exit was never reaped");
    let decoy = match Decoy::take(pid) {
        Ok(d) => d,
        Err(why) => {
            println!("SKIPPED an_exec_kill_never_reaches_the_process_that_reused_its_pid: {why}");
            return;
        }
    };
    assert_eq!(rig.tasks.state("c", "e").unwrap().state, State::Running);
    let killed = rig.tasks.kill("c", "e", 9, false).await;
    assert!(is(&killed, not_found), "{killed:?}");
    assert!(
        decoy.alive(),
        "the Kill reached pid {}'s new owner",
        decoy.pid
    );

    // Once dispatch runs, the exec's own exit is reported as usual.
    assert_eq!(rig.wait("c", "e").await.unwrap().status, 137);
}
