use super::*;
use containerd_shim_protos::ttrpc::Status;

#[test]
fn frame_layout() {
    let f = connect_frame("pod1", 1, Duration::from_secs(1));
    let len = u32::from_be_bytes([f[0], f[1], f[2], f[3]]) as usize;
    assert_eq!(len, f.len() - HEADER_LEN);
    assert_eq!(&f[4..8], &1u32.to_be_bytes());
    assert_eq!(f[8], TYPE_REQUEST);
    let req = Request::parse_from_bytes(&f[HEADER_LEN..]).unwrap();
    assert_eq!(req.service, TASK_SERVICE);
    assert_eq!(req.method, "Connect");
    assert_eq!(req.timeout_nano, 1_000_000_000);
    assert_eq!(
        ConnectRequest::parse_from_bytes(&req.payload).unwrap().id,
        "pod1"
    );
}

#[test]
fn replies_decoded() {
    let ok = Response {
        payload: ConnectResponse {
            shim_pid: 77,
            task_pid: 78,
            version: "0.2.0".into(),
            ..Default::default()
        }
        .write_to_bytes()
        .unwrap(),
        ..Default::default()
    };
    assert_eq!(
        decode_reply(&ok.write_to_bytes().unwrap()),
        (Some(77), None)
    );
    assert_eq!(
        decode_version(&ok.write_to_bytes().unwrap()).as_deref(),
        Some("0.2.0")
    );
    let mut status = Status::new();
    status.set_code(containerd_shim_protos::ttrpc::Code::UNIMPLEMENTED);
    status.set_message("service containerd.task.v2.Task: unknown service".into());
    let err = Response {
        status: Some(status).into(),
        ..Default::default()
    };
    let (pid, st) = decode_reply(&err.write_to_bytes().unwrap());
    assert_eq!(pid, None);
    assert!(st.unwrap().contains("unknown service"));
    assert_eq!(decode_version(&err.write_to_bytes().unwrap()), None);
    assert_eq!(socket_path("unix://@abc"), "\0abc");
    assert_eq!(socket_path("unix:///run/x"), "/run/x");
}

#[tokio::test]
async fn silent_listener_is_a_miss_and_absent_socket_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    // Bound and listening, but never accepting or answering, like a stopped shim.
    let _listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let addr = format!("unix://{}", path.display());
    let t = Instant::now();
    assert_eq!(
        probe(&addr, "x", Duration::from_millis(200)).await,
        Outcome::NoReply
    );
    assert!(t.elapsed() < Duration::from_secs(2));
    let gone = format!("unix://{}", dir.path().join("none.sock").display());
    assert!(matches!(
        probe(&gone, "x", Duration::from_millis(200)).await,
        Outcome::Refused(_)
    ));
}

#[tokio::test]
async fn any_reply_is_an_answer() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut header = [0u8; HEADER_LEN];
        s.read_exact(&mut header).await.unwrap();
        let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
        let mut body = vec![0u8; len as usize];
        s.read_exact(&mut body).await.unwrap();
        let mut status = Status::new();
        status.set_code(containerd_shim_protos::ttrpc::Code::NOT_FOUND);
        let reply = Response {
            status: Some(status).into(),
            ..Default::default()
        }
        .write_to_bytes()
        .unwrap();
        let mut out = (reply.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(&header[4..8]);
        out.extend_from_slice(&[TYPE_RESPONSE, 0]);
        out.extend_from_slice(&reply);
        s.write_all(&out).await.unwrap();
    });
    let addr = format!("unix://{}", path.display());
    let out = probe(&addr, "x", Duration::from_secs(5)).await;
    assert!(out.answered(), "{out:?}");
}

/// What the fake shim does with its nth request (counted over all connections).
#[derive(Clone, Copy)]
enum Act {
    Answer,
    /// Answer, then close the connection.
    AnswerAndClose,
    /// Answer after this long.
    Late(Duration),
}

/// Connections accepted and stream ids seen by a fake shim.
#[derive(Default)]
struct Seen {
    accepted: std::sync::atomic::AtomicUsize,
    ids: std::sync::Mutex<Vec<u32>>,
}

/// A fake shim on `path` that answers every request with a NOT_FOUND status, as `plan` says.
fn fake_shim(path: &std::path::Path, plan: Vec<Act>) -> std::sync::Arc<Seen> {
    use std::sync::atomic::Ordering;
    let seen = std::sync::Arc::new(Seen::default());
    let listener = tokio::net::UnixListener::bind(path).unwrap();
    let plan = std::sync::Arc::new(plan);
    let counter = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let s = seen.clone();
    tokio::spawn(async move {
        loop {
            let (mut conn, _) = listener.accept().await.unwrap();
            s.accepted.fetch_add(1, Ordering::SeqCst);
            let (plan, counter, s) = (plan.clone(), counter.clone(), s.clone());
            tokio::spawn(async move {
                loop {
                    let mut header = [0u8; HEADER_LEN];
                    if conn.read_exact(&mut header).await.is_err() {
                        return;
                    }
                    let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
                    let mut body = vec![0u8; len as usize];
                    conn.read_exact(&mut body).await.unwrap();
                    let id = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
                    s.ids.lock().unwrap().push(id);
                    let n = counter.fetch_add(1, Ordering::SeqCst);
                    let act = plan.get(n).copied().unwrap_or(Act::Answer);
                    if let Act::Late(after) = act {
                        tokio::time::sleep(after).await;
                    }
                    let reply = Response::default().write_to_bytes().unwrap();
                    let mut out = (reply.len() as u32).to_be_bytes().to_vec();
                    out.extend_from_slice(&header[4..8]);
                    out.extend_from_slice(&[TYPE_RESPONSE, 0]);
                    out.extend_from_slice(&reply);
                    if conn.write_all(&out).await.is_err() {
                        return;
                    }
                    if let Act::AnswerAndClose = act {
                        return;
                    }
                }
            });
        }
    });
    seen
}

fn accepted(seen: &Seen) -> usize {
    seen.accepted.load(std::sync::atomic::Ordering::SeqCst)
}

#[tokio::test]
async fn one_connection_serves_many_probes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    let seen = fake_shim(&path, vec![]);
    let addr = format!("unix://{}", path.display());
    let mut prober = Prober::new();
    for _ in 0..3 {
        let out = prober.probe(&addr, "x", Duration::from_secs(5)).await;
        assert!(out.answered(), "{out:?}");
        assert!(prober.connected());
    }
    assert_eq!(accepted(&seen), 1);
    assert_eq!(*seen.ids.lock().unwrap(), vec![1, 3, 5]);
}

#[tokio::test]
async fn a_connection_the_shim_closed_is_not_a_miss() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    let seen = fake_shim(&path, vec![Act::AnswerAndClose, Act::Answer]);
    let addr = format!("unix://{}", path.display());
    let mut prober = Prober::new();
    assert!(prober
        .probe(&addr, "x", Duration::from_secs(5))
        .await
        .answered());
    let out = prober.probe(&addr, "x", Duration::from_secs(5)).await;
    assert!(out.answered(), "{out:?}");
    assert_eq!(accepted(&seen), 2);
    // The fresh connection starts its stream ids again.
    assert_eq!(*seen.ids.lock().unwrap(), vec![1, 1]);
}

#[tokio::test]
async fn a_miss_drops_the_connection_so_a_late_reply_answers_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    let late = Duration::from_millis(600);
    let seen = fake_shim(&path, vec![Act::Answer, Act::Late(late), Act::Answer]);
    let addr = format!("unix://{}", path.display());
    let mut prober = Prober::new();
    let deadline = Duration::from_millis(200);
    assert!(prober.probe(&addr, "x", deadline).await.answered());
    assert_eq!(prober.probe(&addr, "x", deadline).await, Outcome::NoReply);
    assert!(!prober.connected());
    // The late reply is still on its way on the dropped connection; the next probe must
    // be answered on a new one.
    let out = prober.probe(&addr, "x", Duration::from_secs(5)).await;
    assert!(out.answered(), "{out:?}");
    assert_eq!(accepted(&seen), 2);
}

#[tokio::test]
async fn a_new_address_gets_a_new_connection() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.sock"), dir.path().join("b.sock"));
    let (seen_a, seen_b) = (fake_shim(&a, vec![]), fake_shim(&b, vec![]));
    let mut prober = Prober::new();
    for path in [&a, &b] {
        let addr = format!("unix://{}", path.display());
        assert!(prober
            .probe(&addr, "x", Duration::from_secs(5))
            .await
            .answered());
    }
    assert_eq!((accepted(&seen_a), accepted(&seen_b)), (1, 1));
}
