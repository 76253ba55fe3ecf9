//! The gate over in-memory connections and over the accept loop on a real socket.

use std::sync::Arc;
use std::time::Duration;

use futures::{poll, StreamExt};
use tokio::io::{duplex, AsyncRead, AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::time::timeout;

use super::super::budget::Budget;
use super::super::{accepted, Guarded, Keep, Limits};
use super::*;
use crate::peer::SameUser;

/// A whole frame of `len` payload bytes, each `id`.
fn frame(len: u32, id: u32) -> Vec<u8> {
    let mut f = len.to_be_bytes().to_vec();
    f.extend_from_slice(&id.to_be_bytes());
    f.extend_from_slice(&[1, 0]);
    f.resize(10 + len as usize, id as u8);
    f
}

fn gated(gate: &Arc<Gate>) -> (Guarded<DuplexStream>, DuplexStream) {
    let (ours, theirs) = duplex(1 << 20);
    let g = Guarded::new(
        ours,
        Budget::new(1 << 20),
        Limits::default(),
        None,
        None,
        None,
    )
    .with_gate(gate.join(-1, None, None));
    (g, theirs)
}

/// Reads one frame as ttrpc does: the header, then the payload.
async fn read_frame(g: &mut (impl AsyncRead + Unpin)) -> Vec<u8> {
    let mut f = vec![0u8; 10];
    g.read_exact(&mut f).await.unwrap();
    let len = u32::from_be_bytes([f[0], f[1], f[2], f[3]]) as usize;
    f.resize(10 + len, 0);
    g.read_exact(&mut f[10..]).await.unwrap();
    f
}

/// Polls a read of one byte once; whether it got one.
async fn one_byte_now(g: &mut Guarded<DuplexStream>) -> bool {
    let mut b = [0u8; 1];
    let read = g.read(&mut b);
    tokio::pin!(read);
    matches!(poll!(read), std::task::Poll::Ready(Ok(1)))
}

#[tokio::test]
async fn a_closed_gate_holds_the_next_request_in_the_socket_and_opening_delivers_it() {
    let gate = Gate::new();
    let (mut a, mut peer_a) = gated(&gate);
    let (mut b, mut peer_b) = gated(&gate);
    peer_a.write_all(&frame(20, 1)).await.unwrap();
    assert_eq!(
        read_frame(&mut a).await,
        frame(20, 1),
        "an open gate passes frames"
    );
    // Both readers are between frames; closing parks them once they look again (ttrpc's
    // reader always has a read pending; here the reads are driven by hand).
    // Polled once: the gate is closed from here on, and close waits for the parking.
    let closing = gate.close();
    tokio::pin!(closing);
    assert!(poll!(&mut closing).is_pending());
    peer_a.write_all(&frame(30, 2)).await.unwrap();
    peer_b.write_all(&frame(5, 3)).await.unwrap();
    assert!(
        !one_byte_now(&mut a).await,
        "read a request through a closed gate"
    );
    assert!(
        !one_byte_now(&mut b).await,
        "read a request through a closed gate"
    );
    timeout(Duration::from_secs(5), closing)
        .await
        .expect("close never saw both connections parked");
    assert!(gate.is_closed());
    gate.open();
    assert_eq!(
        read_frame(&mut a).await,
        frame(30, 2),
        "request lost or torn"
    );
    assert_eq!(
        read_frame(&mut b).await,
        frame(5, 3),
        "request lost or torn"
    );
}

#[tokio::test]
async fn a_frame_begun_is_read_to_its_end_before_the_connection_parks() {
    let gate = Gate::new();
    let (mut a, mut peer) = gated(&gate);
    let whole = frame(100, 7);
    // Header and half the payload are in when the gate closes.
    peer.write_all(&whole[..60]).await.unwrap();
    let mut got = vec![0u8; 60];
    a.read_exact(&mut got).await.unwrap();
    // Polled once: the gate is closed from here on, and close waits for the parking.
    let closing = gate.close();
    tokio::pin!(closing);
    assert!(poll!(&mut closing).is_pending());
    assert!(
        poll!(&mut closing).is_pending(),
        "parked in the middle of a frame"
    );
    peer.write_all(&whole[60..]).await.unwrap();
    peer.write_all(&frame(3, 8)).await.unwrap();
    got.resize(110, 0);
    a.read_exact(&mut got[60..]).await.unwrap();
    assert_eq!(got, whole, "the frame begun was not delivered whole");
    assert!(
        !one_byte_now(&mut a).await,
        "the next frame passed a closed gate"
    );
    timeout(Duration::from_secs(5), closing)
        .await
        .expect("never parked after its frame ended");
    gate.open();
    assert_eq!(read_frame(&mut a).await, frame(3, 8));
}

#[tokio::test]
async fn a_connection_that_goes_no_longer_holds_up_the_close() {
    let gate = Gate::new();
    let (mut a, mut peer) = gated(&gate);
    peer.write_all(&frame(50, 1)[..20]).await.unwrap();
    let mut part = [0u8; 20];
    a.read_exact(&mut part).await.unwrap();
    // Polled once: the gate is closed from here on, and close waits for the parking.
    let closing = gate.close();
    tokio::pin!(closing);
    assert!(poll!(&mut closing).is_pending());
    assert!(poll!(&mut closing).is_pending());
    assert_eq!(gate.connections(), 1);
    // Its frame never ends: the stall limit (or the peer) closes it, and ttrpc drops it.
    drop(a);
    timeout(Duration::from_secs(5), closing)
        .await
        .expect("a dropped connection kept the gate from closing");
    assert_eq!(gate.connections(), 0);
    // With nobody connected, closing returns at once.
    timeout(Duration::from_secs(1), gate.close()).await.unwrap();
}

#[tokio::test]
async fn nothing_is_accepted_while_the_gate_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    listener.set_nonblocking(true).unwrap();
    let gate = Gate::new();
    let mut incoming = Box::pin(accepted(
        tokio::net::UnixListener::from_std(listener).unwrap(),
        Default::default(),
        Limits::default(),
        Budget::new(1 << 20),
        SameUser::current(),
        Keep::Pid(0),
        gate.clone(),
    ));
    let _first = tokio::net::UnixStream::connect(&path).await.unwrap();
    let first = incoming.next().await.unwrap().unwrap();
    assert_eq!(gate.connections(), 1);
    drop(first);
    timeout(Duration::from_secs(1), gate.close()).await.unwrap();
    let mut waiting = tokio::net::UnixStream::connect(&path).await.unwrap();
    // Connected in the kernel's backlog: the client may even write its request already.
    waiting.write_all(&frame(4, 1)).await.unwrap();
    assert!(
        timeout(Duration::from_millis(300), incoming.next())
            .await
            .is_err(),
        "accepted while the gate was closed"
    );
    gate.open();
    let mut g = timeout(Duration::from_secs(5), incoming.next())
        .await
        .expect("not accepted after the gate opened")
        .unwrap()
        .unwrap();
    let mut got = vec![0u8; 14];
    g.read_exact(&mut got).await.unwrap();
    assert_eq!(got, frame(4, 1));
}

#[tokio::test]
async fn a_parked_connection_is_served_by_the_next_image_with_no_disconnect() {
    use std::os::fd::{BorrowedFd, OwnedFd};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    // What survives the exec: the listening socket and the parked connections (here dups,
    // since this process's first image does not go away).
    let inherited_listener = listener.try_clone().unwrap();
    listener.set_nonblocking(true).unwrap();
    let gate = Gate::new();
    let mut old = Box::pin(accepted(
        tokio::net::UnixListener::from_std(listener).unwrap(),
        Default::default(),
        Limits::default(),
        Budget::new(1 << 20),
        SameUser::current(),
        Keep::Pid(0),
        gate.clone(),
    ));
    let mut client = tokio::net::UnixStream::connect(&path).await.unwrap();
    let mut served = old.next().await.unwrap().unwrap();
    // A Wait-like request the old image never answers, and one it answers.
    let wait = frame(12, 1);
    client.write_all(&wait).await.unwrap();
    assert_eq!(read_frame(&mut served).await, wait);
    client.write_all(&frame(8, 3)).await.unwrap();
    assert_eq!(read_frame(&mut served).await, frame(8, 3));
    served.write_all(&response(5, 3)).await.unwrap();
    let mut reply = vec![0u8; 15];
    client.read_exact(&mut reply).await.unwrap();
    assert_eq!(reply, response(5, 3));

    let closing = gate.close();
    tokio::pin!(closing);
    assert!(poll!(&mut closing).is_pending());
    assert_eq!(gate.parked(), None, "handed over before it was parked");
    // A request sent during the pause waits in the socket.
    client.write_all(&frame(40, 5)).await.unwrap();
    let mut b = [0u8; 1];
    let read = served.read(&mut b);
    tokio::pin!(read);
    assert!(poll!(read).is_pending(), "read through the closed gate");
    timeout(Duration::from_secs(5), closing).await.unwrap();
    let parked = gate.parked().expect("all parked");
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].peer_pid, Some(std::process::id() as i32));
    assert_eq!(
        parked[0].pending,
        Ok(vec![wait.clone()]),
        "only the unanswered request is pending"
    );
    let replay = parked[0].pending.clone().unwrap().concat();
    // SAFETY: the fd the gate names is the served connection's, open until `served` drops.
    let inherited: OwnedFd = unsafe { BorrowedFd::borrow_raw(parked[0].fd) }
        .try_clone_to_owned()
        .unwrap();
    drop(served);
    drop(old);

    // The client sees no end of stream: its connection is still open.
    let mut probe = [0u8; 1];
    match client.try_read(&mut probe) {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("the client saw {other:?} across the handover"),
    }

    // The next image: the inherited connection first, its unanswered request read again
    // before the socket's, then new connections.
    inherited_listener.set_nonblocking(true).unwrap();
    let mut new = Box::pin(accepted(
        tokio::net::UnixListener::from_std(inherited_listener).unwrap(),
        [(super::super::adopt(inherited).unwrap(), replay)].into(),
        Limits::default(),
        Budget::new(1 << 20),
        SameUser::current(),
        Keep::Pid(0),
        Gate::new(),
    ));
    let mut resumed = new.next().await.unwrap().unwrap();
    assert_eq!(
        read_frame(&mut resumed).await,
        wait,
        "the unanswered request"
    );
    assert_eq!(
        read_frame(&mut resumed).await,
        frame(40, 5),
        "the request sent during the pause"
    );
    // Both answered on the same connection, the Wait on its own stream id.
    resumed.write_all(&response(3, 1)).await.unwrap();
    resumed.write_all(&response(0, 5)).await.unwrap();
    let mut replies = vec![0u8; 23];
    client.read_exact(&mut replies).await.unwrap();
    assert_eq!(replies, [response(3, 1), response(0, 5)].concat());
    let _another = tokio::net::UnixStream::connect(&path).await.unwrap();
    timeout(Duration::from_secs(5), new.next())
        .await
        .expect("the inherited listener accepts")
        .unwrap()
        .unwrap();
}

/// A response frame of `len` payload bytes on stream `id`.
fn response(len: u32, id: u32) -> Vec<u8> {
    let mut f = frame(len, id);
    f[8] = 2;
    f
}

#[test]
fn only_unix_stream_sockets_are_adopted() {
    use std::os::fd::OwnedFd;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _in_rt = rt.enter();
    let (r, _w) = nix::unistd::pipe().unwrap();
    let err = super::super::adopt(r).unwrap_err();
    assert!(
        err.to_string().contains("Socket operation on non-socket"),
        "{err}"
    );
    let (d, _d2) = std::os::unix::net::UnixDatagram::pair().unwrap();
    let err = super::super::adopt(OwnedFd::from(d)).unwrap_err();
    assert!(err.to_string().contains("not a stream socket"), "{err}");
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let err = super::super::adopt(OwnedFd::from(udp)).unwrap_err();
    assert!(err.to_string().contains("not a Unix socket"), "{err}");
    let (s, _s2) = std::os::unix::net::UnixStream::pair().unwrap();
    assert!(super::super::adopt(OwnedFd::from(s)).is_ok());
}

/// A ttrpc request frame for `service/method` on stream `id`.
fn wire_request(method: &str, id: u32) -> Vec<u8> {
    use containerd_shim_protos::protobuf::Message;
    let mut r = containerd_shim_protos::ttrpc::Request::new();
    r.service = "containerd.task.v2.Task".into();
    r.method = method.into();
    let body = r.write_to_bytes().unwrap();
    let mut f = (body.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(&id.to_be_bytes());
    f.extend_from_slice(&[1, 0]);
    f.extend_from_slice(&body);
    f
}

#[tokio::test]
async fn the_handover_waits_for_calls_in_flight_but_not_for_waits() {
    use super::super::inflight::{replay_safe, InFlight};
    let gate = Gate::new();
    let inflight = InFlight::new();
    let (ours, mut peer) = duplex(1 << 20);
    let mut g = Guarded::new(
        ours,
        Budget::new(1 << 20),
        Limits::default(),
        None,
        None,
        None,
    )
    .with_inflight(inflight.clone())
    .with_gate(gate.join(-1, None, Some(inflight)));
    let wait = wire_request("Wait", 1);
    let create = wire_request("Create", 3);
    peer.write_all(&wait).await.unwrap();
    peer.write_all(&create).await.unwrap();
    assert_eq!(read_frame(&mut g).await, wait);
    assert_eq!(read_frame(&mut g).await, create);
    let closing = gate.close();
    tokio::pin!(closing);
    assert!(poll!(&mut closing).is_pending());
    assert!(!one_byte_now(&mut g).await);
    timeout(Duration::from_secs(5), closing).await.unwrap();
    assert!(gate.parked().is_some());
    assert_eq!(
        gate.settled(replay_safe),
        None,
        "handed over with a Create in flight"
    );
    assert_eq!(gate.unsettled(replay_safe), 1);
    // Its answer goes out through the closed gate; only the Wait is left.
    g.write_all(&response(4, 3)).await.unwrap();
    let settled = gate
        .settled(replay_safe)
        .expect("settled once the Create was answered");
    assert_eq!(gate.unsettled(replay_safe), 0);
    assert_eq!(settled[0].pending, Ok(vec![wait]));
}
