//! The liveness probe: one ttrpc `Connect` call on the shim's socket under a deadline.
//!
//! The frame is written by hand on a fresh connection, so the probe owns no background
//! task and leaves nothing behind when its deadline drops it. It calls
//! `containerd.task.v2.Task`, the service containerd 1.6/1.7 shims serve (sturdy serves it
//! too); any reply frame, an error status like "unknown service" included, proves the shim
//! reads its socket and answers. Only silence until the deadline is a miss.

use std::time::{Duration, Instant};

use containerd_shim_protos::api::{ConnectRequest, ConnectResponse};
use containerd_shim_protos::protobuf::Message;
use containerd_shim_protos::ttrpc::{Request, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// The task service containerd 1.6/1.7 shims serve.
pub const TASK_SERVICE: &str = "containerd.task.v2.Task";
const HEADER_LEN: usize = 10;
const TYPE_REQUEST: u8 = 1;
const TYPE_RESPONSE: u8 = 2;
const STREAM_ID: u32 = 1;
/// Replies larger than this are not read (a Connect reply is tiny).
const MAX_REPLY: usize = 64 * 1024;

/// What a probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The shim replied.
    Answered {
        /// Round trip.
        latency: Duration,
        /// The shim's pid, if the reply was a successful Connect.
        shim_pid: Option<u32>,
        /// The error status the shim replied with, if any.
        status: Option<String>,
    },
    /// Nothing came back before the deadline.
    NoReply,
    /// The socket refused or does not exist: nobody listens there.
    Refused(String),
}

impl Outcome {
    /// Whether this counts as an answer.
    pub fn answered(&self) -> bool {
        matches!(self, Outcome::Answered { .. })
    }
}

/// The socket path of a shim address (`unix:///run/containerd/s/x`, or abstract `@x`).
pub fn socket_path(address: &str) -> String {
    let path = address.strip_prefix("unix://").unwrap_or(address);
    match path.strip_prefix('@') {
        Some(abstract_name) => format!("\0{abstract_name}"),
        None => path.to_string(),
    }
}

/// The encoded ttrpc frame of a `Connect` request for task `id`.
pub fn connect_frame(id: &str, deadline: Duration) -> Vec<u8> {
    let payload = ConnectRequest {
        id: id.to_string(),
        ..Default::default()
    }
    .write_to_bytes()
    .unwrap_or_default();
    let mut req = Request::new();
    req.set_service(TASK_SERVICE.into());
    req.set_method("Connect".into());
    req.set_payload(payload);
    req.set_timeout_nano(deadline.as_nanos().min(i64::MAX as u128) as i64);
    let body = req.write_to_bytes().unwrap_or_default();
    let mut frame = Vec::with_capacity(HEADER_LEN + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&STREAM_ID.to_be_bytes());
    frame.push(TYPE_REQUEST);
    frame.push(0);
    frame.extend_from_slice(&body);
    frame
}

/// Decodes a reply body: the shim pid of a successful Connect, or the error status.
pub fn decode_reply(body: &[u8]) -> (Option<u32>, Option<String>) {
    let Ok(resp) = Response::parse_from_bytes(body) else {
        return (None, Some("undecodable reply".into()));
    };
    if let Some(status) = resp.status.as_ref() {
        if status.code.value() != 0 {
            return (None, Some(format!("{:?}: {}", status.code, status.message)));
        }
    }
    let pid = ConnectResponse::parse_from_bytes(&resp.payload)
        .ok()
        .map(|c| c.shim_pid)
        .filter(|p| *p > 0);
    (pid, None)
}

/// Probes the shim at `address` once, asking about task `id`, within `deadline`.
pub async fn probe(address: &str, id: &str, deadline: Duration) -> Outcome {
    let started = Instant::now();
    match tokio::time::timeout(deadline, exchange(address, id, deadline)).await {
        Err(_) => Outcome::NoReply,
        Ok(Err(Failure::Refused(e))) => Outcome::Refused(e),
        // The shim closed or garbled the connection: it is alive enough to do that, but
        // it did not answer either; that is a miss, not a death (the pidfd tells deaths).
        Ok(Err(Failure::Broken(_))) => Outcome::NoReply,
        Ok(Ok((shim_pid, status))) => Outcome::Answered {
            latency: started.elapsed(),
            shim_pid,
            status,
        },
    }
}

enum Failure {
    Refused(String),
    Broken(#[allow(dead_code)] String),
}

async fn exchange(
    address: &str,
    id: &str,
    deadline: Duration,
) -> Result<(Option<u32>, Option<String>), Failure> {
    let path = socket_path(address);
    let mut stream = UnixStream::connect(&path)
        .await
        .map_err(|e| Failure::Refused(format!("connect {address}: {e}")))?;
    stream
        .write_all(&connect_frame(id, deadline))
        .await
        .map_err(|e| Failure::Broken(format!("write: {e}")))?;
    loop {
        let mut header = [0u8; HEADER_LEN];
        stream
            .read_exact(&mut header)
            .await
            .map_err(|e| Failure::Broken(format!("read header: {e}")))?;
        let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let stream_id = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
        if len > MAX_REPLY {
            // Still a reply from a live shim; do not read it.
            return Ok((None, Some(format!("{len}-byte reply"))));
        }
        let mut body = vec![0u8; len];
        stream
            .read_exact(&mut body)
            .await
            .map_err(|e| Failure::Broken(format!("read body: {e}")))?;
        if header[8] == TYPE_RESPONSE && stream_id == STREAM_ID {
            return Ok(decode_reply(&body));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_shim_protos::ttrpc::Status;

    #[test]
    fn frame_layout() {
        let f = connect_frame("pod1", Duration::from_secs(1));
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
}
