//! The forwarder against a fake containerd events service.

use super::*;
use crate::testing::until;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use containerd_shim_protos::protobuf::well_known_types::empty::Empty;
use containerd_shim_protos::shim_async::create_events;
use containerd_shim_protos::ttrpc::r#async::{Server, TtrpcContext};

fn exit(n: u32) -> Event {
    Event::Exit {
        id: "c".into(),
        exec_id: format!("e{n}"),
        pid: n as i32,
        status: n,
        at: SystemTime::UNIX_EPOCH,
    }
}

fn start(n: i32) -> Event {
    Event::Start {
        id: format!("c{n}"),
        pid: n,
    }
}

fn fast() -> Tuning {
    Tuning {
        connect_timeout: Duration::from_millis(200),
        forward_timeout: Duration::from_millis(500),
        max_backoff: Duration::from_millis(10),
    }
}

/// Records the topics and exec ids it was sent.
#[derive(Default)]
struct FakeContainerd {
    seen: Mutex<Vec<String>>,
    calls: AtomicUsize,
}

#[async_trait]
impl containerd_shim_protos::shim_async::Events for FakeContainerd {
    async fn forward(
        &self,
        _ctx: &TtrpcContext,
        req: ForwardRequest,
    ) -> containerd_shim_protos::ttrpc::Result<Empty> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let env = req.envelope.unwrap_or_default();
        let any = env.event.unwrap_or_default();
        let label = match any.type_url.as_str() {
            "containerd.events.TaskExit" => {
                let e = TaskExit::parse_from_bytes(&any.value).unwrap();
                format!("{} {}", env.topic, e.id)
            }
            "containerd.events.TaskStart" => {
                let e = TaskStart::parse_from_bytes(&any.value).unwrap();
                format!("{} {}", env.topic, e.container_id)
            }
            other => format!("{} {other}", env.topic),
        };
        self.seen.lock().unwrap().push(label);
        Ok(Empty::new())
    }
}

async fn serve(path: &std::path::Path, fake: Arc<FakeContainerd>) -> Server {
    let listener = std::os::unix::net::UnixListener::bind(path).unwrap();
    listener.set_nonblocking(true).unwrap();
    let listener =
        containerd_shim_protos::ttrpc::r#async::transport::Listener::try_from(listener).unwrap();
    let mut server = Server::new()
        .add_listener(listener)
        .register_service(create_events(fake));
    server.start().await.unwrap();
    server
}

#[test]
fn a_full_outbox_keeps_exits() {
    let outbox = Outbox {
        queue: Mutex::new(VecDeque::new()),
        ready: Default::default(),
        failures: Default::default(),
    };
    for n in 0..OUTBOX as i32 {
        outbox.push(start(n));
    }
    outbox.push(start(-1));
    outbox.push(exit(1));
    let q = outbox.lock();
    assert_eq!(q.len(), OUTBOX);
    assert!(
        !q.iter().any(|(e, _)| *e == start(-1)),
        "newest non-exit kept"
    );
    assert!(
        !q.iter().any(|(e, _)| *e == start(0)),
        "oldest non-exit kept"
    );
    assert_eq!(q.back().map(|(e, _)| e.clone()), Some(exit(1)));
}

fn oom(id: &str) -> Event {
    Event::Oom { id: id.into() }
}

fn outbox() -> Outbox {
    Outbox {
        queue: Mutex::new(VecDeque::new()),
        ready: Default::default(),
        failures: Default::default(),
    }
}

fn queued(outbox: &Outbox) -> Vec<Event> {
    outbox.lock().iter().map(|(e, _)| e.clone()).collect()
}

/// An OOM storm while containerd is away (L1): an OOM never takes an exit's place in a
/// full outbox; an exit pushes out other events first, then OOMs, and only then the
/// oldest exit.
#[test]
fn an_oom_never_pushes_out_an_exit() {
    let outbox = outbox();
    outbox.push(oom("c0"));
    for n in 1..OUTBOX as u32 {
        outbox.push(exit(n));
    }
    outbox.push(oom("c1"));
    let q = queued(&outbox);
    assert_eq!(q.len(), OUTBOX);
    assert_eq!(q[0], oom("c0"));
    assert!(
        !q.contains(&oom("c1")),
        "an OOM found room in a full outbox"
    );
    for n in 1..OUTBOX as u32 {
        assert_eq!(q[n as usize], exit(n), "exit {n} was pushed out");
    }

    outbox.push(exit(5000));
    let q = queued(&outbox);
    assert_eq!(q.len(), OUTBOX);
    assert!(
        !q.contains(&oom("c0")),
        "an exit must push out the OOM first"
    );
    assert_eq!(q[0], exit(1));
    outbox.push(exit(5001));
    let q = queued(&outbox);
    assert_eq!(q[0], exit(2), "only exits left: the oldest goes");
    assert_eq!(q[OUTBOX - 1], exit(5001));
}

/// However often a container runs out of memory while containerd is away, one TaskOOM
/// of it waits in the outbox: it says the same thing each time.
#[test]
fn ooms_of_one_container_wait_as_one() {
    let outbox = outbox();
    outbox.push(oom("c1"));
    outbox.push(start(1));
    for _ in 0..3 * OUTBOX {
        outbox.push(oom("c1"));
        outbox.push(oom("c2"));
    }
    outbox.push(exit(1));
    let q = queued(&outbox);
    assert!(
        q.len() == 4,
        "OOMs of one container not coalesced: {} events queued",
        q.len()
    );
    assert_eq!(q, [oom("c1"), start(1), oom("c2"), exit(1)]);
}

#[test]
fn an_oom_is_a_task_oom_kept_before_other_events() {
    let oom = Event::Oom { id: "c1".into() };
    assert_eq!(oom.topic(), "/tasks/oom");
    let any = oom.encode().unwrap();
    assert_eq!(any.type_url, "containerd.events.TaskOOM");
    let decoded = TaskOOM::parse_from_bytes(&any.value).unwrap();
    assert_eq!(decoded.container_id, "c1");

    let outbox = Outbox {
        queue: Mutex::new(VecDeque::new()),
        ready: Default::default(),
        failures: Default::default(),
    };
    outbox.push(oom.clone());
    for n in 0..OUTBOX as i32 {
        outbox.push(start(n));
    }
    outbox.push(exit(1));
    assert!(outbox.lock().iter().any(|(e, _)| *e == oom), "OOM dropped");
}

/// A wedged containerd (listen backlog full, never accepting) must not freeze the shim:
/// the runtime thread keeps serving other work while the forwarder retries.
#[test]
fn a_wedged_containerd_does_not_block_the_runtime_thread() {
    use nix::sys::socket::{
        bind, connect, listen, socket, AddressFamily, Backlog, SockFlag, SockType, UnixAddr,
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("containerd.sock.ttrpc");
    let listener = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .unwrap();
    let addr = UnixAddr::new(&path).unwrap();
    bind(listener.as_raw_fd(), &addr).unwrap();
    listen(&listener, Backlog::new(0).unwrap()).unwrap();
    // Fill the backlog: non-blocking connects until the kernel says EAGAIN.
    let mut fillers: Vec<OwnedFd> = Vec::new();
    for _ in 0..64 {
        let s = socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap();
        match connect(s.as_raw_fd(), &addr) {
            Ok(()) => fillers.push(s),
            Err(nix::errno::Errno::EAGAIN) => break,
            Err(e) => panic!("filler connect: {e}"),
        }
    }

    let (tx, rx) = std::sync::mpsc::channel();
    let address = path.to_string_lossy().into_owned();
    let worker = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let events = Events::connect_with(&address, "ns", fast());
            events.publish(exit(1));
            // Ticks of other work on the same thread while the forwarder retries.
            for _ in 0..20 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let _ = tx.send((events.failures(), events.pending()));
        });
    });
    let got = rx.recv_timeout(Duration::from_secs(10));
    let (failures, pending) = got.expect("the runtime thread froze on a wedged containerd");
    assert!(failures >= 1, "the forwarder never tried");
    assert_eq!(pending, 1, "the exit must stay queued");
    worker.join().unwrap();
    drop(fillers);
}

/// Exits are kept for as long as containerd is away (the old forwarder gave up after
/// ten tries), then delivered in order; a containerd restart loses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_survive_an_absent_and_a_restarting_containerd() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("containerd.sock.ttrpc");
    let events = Events::connect_with(&path.to_string_lossy(), "ns", fast());
    events.publish(start(1));
    events.publish(exit(1));
    assert!(
        until(Duration::from_secs(20), || events.failures() >= 50).await,
        "forwarder stopped retrying after {} tries",
        events.failures()
    );
    assert_eq!(
        events.pending(),
        2,
        "events dropped while containerd was away"
    );

    let fake = Arc::new(FakeContainerd::default());
    let mut server = serve(&path, fake.clone()).await;
    assert!(until(Duration::from_secs(10), || events.pending() == 0).await);
    assert_eq!(
        *fake.seen.lock().unwrap(),
        vec!["/tasks/start c1".to_string(), "/tasks/exit e1".to_string()]
    );

    // containerd restarts: the old connection dies, the next events wait and then arrive.
    server.shutdown().await.unwrap();
    let _ = std::fs::remove_file(&path);
    for n in 2..=4 {
        events.publish(exit(n));
    }
    let before = events.failures();
    assert!(until(Duration::from_secs(10), || events.failures() > before + 5).await);
    let fake2 = Arc::new(FakeContainerd::default());
    let mut server2 = serve(&path, fake2.clone()).await;
    assert!(until(Duration::from_secs(10), || events.pending() == 0).await);
    assert_eq!(
        *fake2.seen.lock().unwrap(),
        vec![
            "/tasks/exit e2".to_string(),
            "/tasks/exit e3".to_string(),
            "/tasks/exit e4".to_string()
        ]
    );
    server2.shutdown().await.unwrap();
}
