//! The upgrade service over a real ttrpc server on a socket, next to a stand-in Task
//! service whose `Wait` and `Create` block until released.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use containerd_shim_protos::protobuf::Message;
use containerd_shim_protos::ttrpc::r#async::Server;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::Semaphore;

use super::*;
use crate::listener::{listen, Keep, Limits};

/// A Task service stand-in: every method counts its call, waits for a permit, then
/// answers empty.
struct Blocking(Arc<Semaphore>, Arc<AtomicUsize>);

#[async_trait]
impl MethodHandler for Blocking {
    async fn handler(&self, _ctx: TtrpcContext, _req: Request) -> ttrpc::Result<Response> {
        self.1.fetch_add(1, Ordering::SeqCst);
        self.0.acquire().await.unwrap().forget();
        let mut r = Response::new();
        r.set_status(ttrpc::get_status(Code::OK, ""));
        Ok(r)
    }
}

struct Rig {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    release: Arc<Semaphore>,
    /// Calls that reached the stand-in.
    entered: Arc<AtomicUsize>,
    _server: Server,
}

async fn rig() -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let gate = Gate::new();
    let control = Control::new(gate.clone(), None);
    let release = Arc::new(Semaphore::new(0));
    let entered = Arc::new(AtomicUsize::new(0));
    let mut methods: HashMap<String, Box<dyn MethodHandler + Send + Sync>> = HashMap::new();
    for m in ["Wait", "Create"] {
        methods.insert(
            m.into(),
            Box::new(Blocking(release.clone(), entered.clone())),
        );
    }
    let task = Service {
        methods,
        streams: HashMap::new(),
    };
    let mut server = Server::new()
        .add_listener(listen(listener, Limits::default(), Keep::Pid(0), gate).unwrap())
        .register_service(HashMap::from([(
            "containerd.task.v2.Task".to_string(),
            task,
        )]))
        .register_service(control.services());
    server.start().await.unwrap();
    Rig {
        _dir: dir,
        path,
        release,
        entered,
        _server: server,
    }
}

fn frame(service: &str, method: &str, id: u32, payload: &[u8]) -> Vec<u8> {
    let mut r = Request::new();
    r.service = service.into();
    r.method = method.into();
    r.payload = payload.to_vec();
    let body = r.write_to_bytes().unwrap();
    let mut f = (body.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(&id.to_be_bytes());
    f.extend_from_slice(&[1, 0]);
    f.extend_from_slice(&body);
    f
}

/// Reads one response frame: its stream id and the decoded response.
async fn response(c: &mut UnixStream) -> (u32, Response) {
    let mut h = [0u8; 10];
    c.read_exact(&mut h).await.unwrap();
    let len = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize;
    let id = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
    assert_eq!(h[8], 2, "a response frame");
    let mut body = vec![0u8; len];
    c.read_exact(&mut body).await.unwrap();
    (id, Response::parse_from_bytes(&body).unwrap())
}

async fn rehearse(path: &std::path::Path, deadline_ms: u64) -> Response {
    let mut c = UnixStream::connect(path).await.unwrap();
    let req = serde_json::to_vec(&RehearseRequest {
        deadline_ms,
        dump_for: None,
    })
    .unwrap();
    c.write_all(&frame(SERVICE, "Rehearse", 1, &req))
        .await
        .unwrap();
    response(&mut c).await.1
}

#[tokio::test]
async fn describe_names_this_build() {
    let rig = rig().await;
    let mut c = UnixStream::connect(&rig.path).await.unwrap();
    c.write_all(&frame(SERVICE, "Describe", 1, b""))
        .await
        .unwrap();
    let (id, r) = response(&mut c).await;
    assert_eq!(id, 1);
    assert_eq!(r.status.code.value(), 0, "{:?}", r.status);
    let d: Description = serde_json::from_slice(&r.payload).unwrap();
    assert_eq!(d.version, crate::VERSION);
    assert_eq!(d.handover_writes, crate::handover::WRITES);
    assert_eq!(d.connections, 1);
    assert!(!d.paused);
}

#[tokio::test]
async fn a_rehearsal_holds_requests_at_frame_boundaries_and_lets_them_through_after() {
    let rig = rig().await;
    // A Wait in flight does not keep the shim from settling; it is answered afterwards.
    let mut waiting = UnixStream::connect(&rig.path).await.unwrap();
    waiting
        .write_all(&frame("containerd.task.v2.Task", "Wait", 1, b""))
        .await
        .unwrap();
    let entered = rig.entered.clone();
    assert!(
        crate::testing::until(Duration::from_secs(5), || entered.load(Ordering::SeqCst)
            == 1)
        .await
    );
    let r = rehearse(&rig.path, 2000).await;
    assert_eq!(r.status.code.value(), 0, "{:?}", r.status);
    let done: Rehearsal = serde_json::from_slice(&r.payload).unwrap();
    assert_eq!(done.waits, 1, "{done:?}");
    assert!(done.connections >= 2, "{done:?}");
    assert!(done.paused_us < 2_000_000, "{done:?}");
    rig.release.add_permits(1);
    let (id, r) = response(&mut waiting).await;
    assert_eq!(
        (id, r.status.code.value()),
        (1, 0),
        "the Wait was not answered"
    );
}

#[tokio::test]
async fn a_call_in_flight_keeps_it_from_settling_and_requests_flow_again() {
    let rig = rig().await;
    let mut creating = UnixStream::connect(&rig.path).await.unwrap();
    creating
        .write_all(&frame("containerd.task.v2.Task", "Create", 1, b""))
        .await
        .unwrap();
    // The Create is being served when the rehearsal begins.
    let entered = rig.entered.clone();
    assert!(
        crate::testing::until(Duration::from_secs(5), || entered.load(Ordering::SeqCst)
            == 1)
        .await
    );
    let r = rehearse(&rig.path, 200).await;
    assert_ne!(r.status.code.value(), 0, "settled with a Create in flight");
    assert!(r.status.message.contains("not settled"), "{:?}", r.status);
    // The gate is open again: a new request is served as before.
    let mut c = UnixStream::connect(&rig.path).await.unwrap();
    c.write_all(&frame(SERVICE, "Describe", 3, b""))
        .await
        .unwrap();
    let (id, r) = response(&mut c).await;
    assert_eq!((id, r.status.code.value()), (3, 0));
    let d: Description = serde_json::from_slice(&r.payload).unwrap();
    assert!(!d.paused, "left paused");
    rig.release.add_permits(1);
    let (id, r) = response(&mut creating).await;
    assert_eq!((id, r.status.code.value()), (1, 0));
}
