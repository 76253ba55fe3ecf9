//! The shim's connection cap with containerd on the other end. containerd keeps one
//! connection per task open and idle, and takes a closed one for a dead shim; connections
//! of anyone else that sit idle at the cap must give way to containerd's new ones, and
//! containerd's own must never be closed. The daemon's idle limit (5 minutes) is shortened
//! to one second through its debug-build knob.

use std::os::unix::net::UnixStream;
use std::time::Duration;

use sturdy_integration::ctr::runtime_flags;
use sturdy_integration::{Containerd, Handler, BUSYBOX_IMAGE};

const T: Duration = Duration::from_secs(60);
/// The shim's connection cap (`sturdy_shim::listener::MAX_CONNECTIONS`).
const CAP: usize = 64;

fn run_args(fx: &Containerd, id: &str) -> Vec<String> {
    let mut args = vec!["run".to_string(), "-d".into()];
    args.extend(runtime_flags(fx, Handler::Sturdy));
    args.extend([
        "--annotation".into(),
        "io.containerd.runc.v2.group=capped".into(),
        BUSYBOX_IMAGE.into(),
        id.into(),
        "/bin/sleep".into(),
        "300".into(),
    ]);
    args
}

/// Whether the shim closed our end (end of stream or an error; nothing is ever sent).
fn closed(s: &UnixStream) -> bool {
    let mut b = [0u8; 1];
    s.set_nonblocking(true).unwrap();
    match nix::sys::socket::recv(
        std::os::fd::AsRawFd::as_raw_fd(s),
        &mut b,
        nix::sys::socket::MsgFlags::MSG_PEEK,
    ) {
        Ok(0) => true,
        Err(nix::errno::Errno::EAGAIN) => false,
        _ => true,
    }
}

#[tokio::test]
async fn idle_connections_give_way_to_containerd_and_containerds_own_stay() {
    let fx = Containerd::builder()
        .env("STURDY_TEST_IDLE_LIMIT_MS", "1000")
        .start()
        .await
        .expect("start containerd");
    let ns = fx.namespace().to_string();
    let a = run_args(&fx, "first");
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    fx.ctr_in(&ns, &a, T).await.expect("run first");
    let address = fx
        .bundle(&ns, "first")
        .and_then(|b| b.address)
        .expect("shim address");
    let sock = address.trim_start_matches("unix://").to_string();

    // containerd holds one connection; ours take every other slot, and one more waits.
    let ours: Vec<UnixStream> = (0..CAP)
        .map(|_| UnixStream::connect(&sock).expect("connect to the shim"))
        .collect();

    // A second container of the group: containerd needs a new connection to this shim.
    let b = run_args(&fx, "second");
    let b: Vec<&str> = b.iter().map(String::as_str).collect();
    let second = fx.ctr_in(&ns, &b, Duration::from_secs(30)).await;
    assert!(
        second.is_ok(),
        "containerd's new connection was never served: {second:?}\n{}",
        fx.log_tail(30)
    );
    let gave_way = ours.iter().filter(|s| closed(s)).count();
    assert!(gave_way >= 2, "only {gave_way} idle connections gave way");

    // containerd's first connection stayed: the first task still runs under the shim.
    for id in ["first", "second"] {
        let (status, _) = fx.task_process(&ns, id).await.expect("Tasks.Get");
        assert_eq!(
            status,
            containerd_client::types::v1::Status::Running,
            "{id}\n{}",
            fx.log_tail(30)
        );
    }
    let log = fx.log_tail(400);
    assert!(
        !log.contains("shim disconnected") && !log.contains("cleaning up dead shim"),
        "containerd lost its connection to the shim:\n{log}"
    );
    // And the first task is still served through its old connection (Kill answered).
    fx.ctr_in(&ns, &["tasks", "kill", "-s", "SIGKILL", "first"], T)
        .await
        .expect("kill first");
}
