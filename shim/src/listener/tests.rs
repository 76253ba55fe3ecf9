//! The listener's metering over in-memory streams and its accept loop over real sockets.

use super::*;
use futures::{poll, StreamExt};
use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::time::{timeout, Instant};
use ttrpc::proto::MESSAGE_LENGTH_MAX;

const STALL: Duration = Duration::from_secs(5);

fn limits(budget: usize, small_frame: usize) -> Limits {
    Limits {
        max_connections: 4,
        budget,
        small_frame,
        stall: STALL,
        idle: IDLE_LIMIT,
    }
}

fn header(len: u32, id: u32) -> [u8; 10] {
    let mut h = [0u8; 10];
    h[..4].copy_from_slice(&len.to_be_bytes());
    h[4..8].copy_from_slice(&id.to_be_bytes());
    h[8] = 1;
    h
}

/// A whole frame whose payload bytes are `id` repeated.
fn frame(len: u32, id: u32) -> Vec<u8> {
    let mut f = header(len, id).to_vec();
    f.resize(10 + len as usize, id as u8);
    f
}

/// A metered connection and the peer's end of it.
fn conn(budget: &Arc<Budget>, limits: Limits) -> (Guarded<DuplexStream>, DuplexStream) {
    let (ours, theirs) = duplex(1 << 20);
    (
        Guarded::new(ours, budget.clone(), limits, None, None, None),
        theirs,
    )
}

/// Reads one frame the way ttrpc does: exactly the header, then exactly the payload.
async fn read_frame(g: &mut Guarded<DuplexStream>) -> io::Result<Vec<u8>> {
    let mut h = [0u8; 10];
    g.read_exact(&mut h).await?;
    let len = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize;
    let mut f = h.to_vec();
    f.resize(10 + len, 0);
    g.read_exact(&mut f[10..]).await?;
    Ok(f)
}

#[tokio::test]
async fn frames_pass_through_byte_for_byte() {
    let budget = Budget::new(1 << 20);
    let (mut g, mut peer) = conn(&budget, limits(1 << 20, 100));
    // A header split across writes: nothing reaches the reader until it is whole.
    let first = frame(300, 1);
    peer.write_all(&first[..3]).await.unwrap();
    let mut h = [0u8; 10];
    {
        let mut read = std::pin::pin!(g.read_exact(&mut h));
        assert!(poll!(&mut read).is_pending());
        peer.write_all(&first[3..7]).await.unwrap();
        assert!(poll!(&mut read).is_pending());
        peer.write_all(&first[7..]).await.unwrap();
        read.await.unwrap();
    }
    assert_eq!(h[..], first[..10]);
    let mut payload = vec![0u8; 300];
    g.read_exact(&mut payload).await.unwrap();
    assert_eq!(payload[..], first[10..]);

    // Back-to-back frames in one write, an empty one among them, read ttrpc's way and
    // with one large buffer: the same bytes come out.
    let frames = [frame(5, 2), frame(0, 3), frame(200, 4), frame(70_000, 5)];
    let all = frames.concat();
    peer.write_all(&all).await.unwrap();
    for f in &frames[..2] {
        assert_eq!(&read_frame(&mut g).await.unwrap(), f);
    }
    let rest = frames[2..].concat();
    let mut got = vec![0u8; rest.len()];
    g.read_exact(&mut got).await.unwrap();
    assert_eq!(got, rest);
    assert_eq!(budget.available(), 1 << 20);
}

#[tokio::test]
async fn a_large_frame_holds_budget_until_its_payload_passed() {
    let budget = Budget::new(1000);
    let (mut g, mut peer) = conn(&budget, limits(1000, 100));
    peer.write_all(&frame(600, 1)[..310]).await.unwrap();
    let mut h = [0u8; 10];
    g.read_exact(&mut h).await.unwrap();
    assert_eq!(
        budget.available(),
        400,
        "reserved before the header went on"
    );
    let mut part = vec![0u8; 300];
    g.read_exact(&mut part).await.unwrap();
    assert_eq!(budget.available(), 400, "held while payload is missing");
    peer.write_all(&frame(600, 1)[310..]).await.unwrap();
    g.read_exact(&mut part).await.unwrap();
    assert_eq!(budget.available(), 1000, "released at the frame's end");
    // Small frames never touch the budget.
    peer.write_all(&frame(100, 2)).await.unwrap();
    g.read_exact(&mut h).await.unwrap();
    assert_eq!(budget.available(), 1000);
}

#[tokio::test]
async fn a_frame_waits_for_budget_while_small_ones_go_on() {
    let budget = Budget::new(1000);
    let (mut a, mut peer_a) = conn(&budget, limits(1000, 100));
    let (mut b, mut peer_b) = conn(&budget, limits(1000, 100));
    let (mut c, mut peer_c) = conn(&budget, limits(1000, 100));
    peer_a.write_all(&frame(600, 1)[..10]).await.unwrap();
    let mut h = [0u8; 10];
    a.read_exact(&mut h).await.unwrap();
    peer_b.write_all(&frame(600, 2)).await.unwrap();
    let mut hb = [0u8; 10];
    let mut b_read = std::pin::pin!(b.read_exact(&mut hb));
    assert!(
        poll!(&mut b_read).is_pending(),
        "ttrpc saw a header past the budget"
    );
    // A small request (what containerd sends) is not held up.
    peer_c.write_all(&frame(50, 3)).await.unwrap();
    assert_eq!(read_frame(&mut c).await.unwrap(), frame(50, 3));
    assert!(poll!(&mut b_read).is_pending());
    // A's frame completes: its budget goes to B.
    peer_a.write_all(&frame(600, 1)[10..]).await.unwrap();
    let mut payload = vec![0u8; 600];
    a.read_exact(&mut payload).await.unwrap();
    timeout(Duration::from_secs(5), b_read)
        .await
        .expect("B still waits after A's budget came back")
        .unwrap();
    assert_eq!(budget.available(), 400);
}

#[tokio::test]
async fn a_frame_larger_than_the_whole_budget_closes_the_connection() {
    let budget = Budget::new(1000);
    let (mut g, mut peer) = conn(&budget, limits(1000, 100));
    peer.write_all(&header(1001, 1)).await.unwrap();
    let mut h = [0u8; 10];
    let err = g.read_exact(&mut h).await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    assert_eq!(budget.available(), 1000);
}

#[tokio::test]
async fn frames_beyond_ttrpcs_maximum_are_left_to_ttrpc() {
    // ttrpc discards those page by page and answers with an error: nothing to reserve.
    let budget = Budget::new(1000);
    let (mut g, mut peer) = conn(&budget, limits(1000, 100));
    let len = MESSAGE_LENGTH_MAX as u32 + 1;
    peer.write_all(&header(len, 1)).await.unwrap();
    let mut h = [0u8; 10];
    g.read_exact(&mut h).await.unwrap();
    assert_eq!(h, header(len, 1));
    assert_eq!(budget.available(), 1000);
}

/// Reads from `g` until it fails; the error kind and the time it took (paused clock).
async fn until_cut(g: &mut Guarded<DuplexStream>) -> (io::ErrorKind, Duration) {
    let began = Instant::now();
    let mut buf = [0u8; 10];
    loop {
        match g.read(&mut buf).await {
            Ok(0) => panic!("end of stream instead of a cut"),
            Ok(_) => continue,
            Err(e) => return (e.kind(), began.elapsed()),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_stalled_frame_is_cut_and_hands_its_budget_back() {
    let budget = Budget::new(1000);
    // Stuck in the payload, holding budget.
    let (mut g, mut peer) = conn(&budget, limits(1000, 100));
    peer.write_all(&frame(600, 1)[..110]).await.unwrap();
    let (kind, took) = until_cut(&mut g).await;
    assert_eq!(kind, io::ErrorKind::TimedOut);
    assert_eq!(took, STALL);
    assert_eq!(
        budget.available(),
        400,
        "held until ttrpc drops the connection"
    );
    drop(g);
    assert_eq!(budget.available(), 1000);

    // Stuck in a header.
    let (mut g, mut peer) = conn(&budget, limits(1000, 100));
    peer.write_all(&header(20, 1)[..4]).await.unwrap();
    assert_eq!(until_cut(&mut g).await, (io::ErrorKind::TimedOut, STALL));
}

#[tokio::test(start_paused = true)]
async fn waiting_for_budget_counts_as_no_progress() {
    let budget = Budget::new(1000);
    let (mut a, mut peer_a) = conn(&budget, limits(1000, 100));
    let (mut b, mut peer_b) = conn(&budget, limits(1000, 100));
    peer_a.write_all(&frame(600, 1)[..10]).await.unwrap();
    let mut h = [0u8; 10];
    a.read_exact(&mut h).await.unwrap();
    peer_b.write_all(&frame(600, 2)).await.unwrap();
    let (kind, took) = until_cut(&mut b).await;
    assert_eq!((kind, took), (io::ErrorKind::TimedOut, STALL));
    drop(b);
    // Its place in the queue went with it: A's release is not held up for it.
    drop(a);
    assert_eq!(budget.available(), 1000);
}

#[tokio::test(start_paused = true)]
async fn idle_connections_are_never_cut() {
    let budget = Budget::new(1000);
    let (mut g, mut peer) = conn(&budget, limits(1000, 100));
    peer.write_all(&frame(20, 1)).await.unwrap();
    read_frame(&mut g).await.unwrap();
    let mut buf = [0u8; 10];
    assert!(
        timeout(STALL * 100, g.read(&mut buf)).await.is_err(),
        "an idle connection between frames was closed"
    );
    drop(peer);
    assert_eq!(g.read(&mut buf).await.unwrap(), 0, "end of stream passes");
}

/// A listener on a fresh socket in `dir`, and its path.
fn bound(dir: &std::path::Path) -> (StdUnixListener, std::path::PathBuf) {
    let path = dir.join("s.sock");
    (StdUnixListener::bind(&path).unwrap(), path)
}

fn accepting(
    listener: StdUnixListener,
    max_connections: usize,
    owner: SameUser,
) -> impl Stream<Item = io::Result<Guarded<UnixStream>>> {
    let limits = Limits {
        max_connections,
        ..Limits::default()
    };
    accepting_with(listener, limits, owner, Keep::Pid(1))
}

fn accepting_with(
    listener: StdUnixListener,
    limits: Limits,
    owner: SameUser,
    keep: Keep,
) -> impl Stream<Item = io::Result<Guarded<UnixStream>>> {
    listener.set_nonblocking(true).unwrap();
    accepted(
        UnixListener::from_std(listener).unwrap(),
        Default::default(),
        limits,
        Budget::new(limits.budget),
        owner,
        keep,
        Gate::new(),
    )
}

#[tokio::test]
async fn connections_beyond_the_cap_wait_in_the_backlog() {
    let dir = tempfile::tempdir().unwrap();
    let (listener, path) = bound(dir.path());
    let mut incoming = Box::pin(accepting(listener, 2, SameUser::current()));
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(UnixStream::connect(&path).await.unwrap());
    }
    let first = incoming.next().await.unwrap().unwrap();
    let _second = incoming.next().await.unwrap().unwrap();
    // The third is waiting to be accepted; a short look is enough to see it is not.
    assert!(
        timeout(Duration::from_millis(300), incoming.next())
            .await
            .is_err(),
        "accepted beyond the cap"
    );
    drop(first);
    let mut third = timeout(Duration::from_secs(5), incoming.next())
        .await
        .expect("a closed connection did not free its slot")
        .unwrap()
        .unwrap();
    // It was kept, not accepted and dropped: it is served.
    clients[2].write_all(&frame(4, 9)).await.unwrap();
    let mut got = vec![0u8; 14];
    third.read_exact(&mut got).await.unwrap();
    assert_eq!(got, frame(4, 9));
}

#[tokio::test]
async fn peers_of_another_uid_are_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let (listener, path) = bound(dir.path());
    let other = SameUser::only(nix::unistd::geteuid().as_raw() + 1);
    // One slot: rejecting a peer must not use it up.
    let mut incoming = Box::pin(accepting(listener, 1, other));
    for _ in 0..2 {
        let mut client = UnixStream::connect(&path).await.unwrap();
        let mut buf = [0u8; 1];
        tokio::select! {
            conn = incoming.next() => panic!("a foreign peer was served: {:?}", conn.is_some()),
            read = timeout(Duration::from_secs(5), client.read(&mut buf)) => {
                assert_eq!(read.expect("not dropped").unwrap(), 0, "expected end of stream");
            }
        }
    }
}

/// Idle long enough to give way, in the tests below.
const IDLE: Duration = Duration::from_millis(300);

/// Serves `g` as ttrpc does: reads until an error or the end, then drops it (which frees
/// its slot). Resolves to how the reading ended.
fn serve(mut g: Guarded<UnixStream>) -> tokio::task::JoinHandle<io::Result<()>> {
    tokio::spawn(async move {
        let mut buf = [0u8; 64];
        loop {
            if g.read(&mut buf).await? == 0 {
                return Ok(());
            }
        }
    })
}

/// Two served connections at a cap of two, and a third waiting; `keep` is "containerd".
async fn full(
    keep: Keep,
) -> (
    tempfile::TempDir,
    std::pin::Pin<Box<impl Stream<Item = io::Result<Guarded<UnixStream>>>>>,
    Vec<UnixStream>,
    Vec<tokio::task::JoinHandle<io::Result<()>>>,
) {
    let dir = tempfile::tempdir().unwrap();
    let (listener, path) = bound(dir.path());
    let limits = Limits {
        max_connections: 2,
        idle: IDLE,
        ..Limits::default()
    };
    let mut incoming = Box::pin(accepting_with(listener, limits, SameUser::current(), keep));
    let mut clients = Vec::new();
    let mut served = Vec::new();
    for _ in 0..2 {
        clients.push(UnixStream::connect(&path).await.unwrap());
        served.push(serve(incoming.next().await.unwrap().unwrap()));
    }
    clients.push(UnixStream::connect(&path).await.unwrap());
    (dir, incoming, clients, served)
}

/// 64 idle connections of the shim's uid used to lock everyone out (containerd too) for as
/// long as they stayed open. At the cap, the one idle longest now gives way to a
/// connection that waits.
#[tokio::test]
async fn at_the_cap_the_longest_idle_connection_gives_way_to_a_waiting_one() {
    let (_dir, mut incoming, mut clients, mut served) = full(Keep::Pid(1)).await;
    // The second keeps busy, so the first is the one idle longest.
    let busy = async {
        loop {
            clients[1].write_all(&frame(4, 1)).await.unwrap();
            tokio::time::sleep(IDLE / 4).await;
        }
    };
    let third = tokio::select! {
        third = timeout(IDLE * 20, incoming.next()) => third,
        _ = busy => unreachable!(),
    };
    third
        .expect("the waiting connection was never served")
        .unwrap()
        .unwrap();
    let first = timeout(Duration::from_secs(5), &mut served[0])
        .await
        .expect("the idle connection is still served");
    let err = first.unwrap().expect_err("it ended without an error");
    assert_eq!(err.kind(), io::ErrorKind::ConnectionAborted);
    assert!(!served[1].is_finished(), "the busy connection was closed");
}

/// containerd takes a closed connection for a dead shim: its own idle connections never
/// give way, whoever waits. Looked up as the peer of its TTRPC socket, here this test.
#[tokio::test]
async fn containerds_idle_connections_never_give_way() {
    let dir = tempfile::tempdir().unwrap();
    let ttrpc = dir.path().join("containerd.sock.ttrpc");
    let _containerd = StdUnixListener::bind(&ttrpc).unwrap();
    let keep = Keep::containerd(&format!("unix://{}", ttrpc.display()));
    assert_eq!(keep.pid().await, Some(std::process::id() as i32));
    let (_dir, mut incoming, _clients, served) = full(keep).await;
    assert!(
        timeout(IDLE * 6, incoming.next()).await.is_err(),
        "a connection of containerd's gave way"
    );
    assert!(served.iter().all(|s| !s.is_finished()));
}

/// Below the cap, or at the cap with nobody waiting, idle connections stay.
#[tokio::test]
async fn idle_connections_stay_while_nobody_waits() {
    let dir = tempfile::tempdir().unwrap();
    let (listener, path) = bound(dir.path());
    let limits = Limits {
        max_connections: 2,
        idle: IDLE,
        ..Limits::default()
    };
    let mut incoming = Box::pin(accepting_with(
        listener,
        limits,
        SameUser::current(),
        Keep::Pid(1),
    ));
    let mut clients = Vec::new();
    let mut served = Vec::new();
    for _ in 0..2 {
        clients.push(UnixStream::connect(&path).await.unwrap());
        served.push(serve(incoming.next().await.unwrap().unwrap()));
    }
    assert!(timeout(IDLE * 6, incoming.next()).await.is_err());
    assert!(
        served.iter().all(|s| !s.is_finished()),
        "an idle connection was closed"
    );
}

/// containerd cannot be looked up (down, or its socket gone): nothing gives way.
#[tokio::test]
async fn without_containerd_nothing_gives_way() {
    let keep = Keep::containerd("/nonexistent/containerd.sock.ttrpc");
    assert_eq!(keep.pid().await, None);
    let (_dir, mut incoming, _clients, served) = full(keep).await;
    assert!(timeout(IDLE * 6, incoming.next()).await.is_err());
    assert!(served.iter().all(|s| !s.is_finished()));
}
