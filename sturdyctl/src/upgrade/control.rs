//! Calls of the shim's upgrade service (`sturdy.upgrade.v1.Upgrade`, docs/upgrade.md) on
//! its socket: one request frame written by hand, one response read, under a deadline.
//! The service's payloads are JSON.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use containerd_shim_protos::protobuf::Message;
use containerd_shim_protos::ttrpc::{Request, Response};
use serde::{Deserialize, Serialize};

use crate::probe::socket_path;

/// The service's name.
pub const SERVICE: &str = "sturdy.upgrade.v1.Upgrade";
/// Largest response read.
const MAX_RESPONSE: usize = 64 << 10;
/// The one stream id these calls use (a fresh connection each).
const STREAM_ID: u32 = 1;

/// What `Rehearse` reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rehearsal {
    /// How long the shim held new requests, microseconds.
    pub paused_us: u64,
    /// Connections it parked.
    pub connections: usize,
    /// Unanswered `Wait`s a handover would replay.
    pub waits: usize,
    /// Processes whose lifecycle the pause held (0 from a shim older than that).
    #[serde(default)]
    pub held: usize,
}

/// Asks the shim at `address` to rehearse an upgrade's pause, settling within `settle`.
pub fn rehearse(address: &str, settle: Duration) -> Result<Rehearsal, String> {
    let req = serde_json::json!({ "deadline_ms": settle.as_millis() as u64 });
    let answer = call(
        address,
        "Rehearse",
        req.to_string().as_bytes(),
        settle + Duration::from_secs(2),
    )?;
    serde_json::from_slice(&answer).map_err(|e| format!("Rehearse answer: {e}"))
}

/// Calls `method` with `payload`; the answer's payload, or the shim's error.
pub fn call(
    address: &str,
    method: &str,
    payload: &[u8],
    deadline: Duration,
) -> Result<Vec<u8>, String> {
    let path = socket_path(address);
    let mut c = UnixStream::connect(&path).map_err(|e| format!("connect {address}: {e}"))?;
    c.set_read_timeout(Some(deadline))
        .and_then(|()| c.set_write_timeout(Some(deadline)))
        .map_err(|e| e.to_string())?;
    let mut req = Request::new();
    req.service = SERVICE.into();
    req.method = method.into();
    req.payload = payload.to_vec();
    req.timeout_nano = deadline.as_nanos().min(i64::MAX as u128) as i64;
    let body = req.write_to_bytes().map_err(|e| e.to_string())?;
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&STREAM_ID.to_be_bytes());
    frame.extend_from_slice(&[1, 0]);
    frame.extend_from_slice(&body);
    c.write_all(&frame)
        .map_err(|e| format!("{method}: write: {e}"))?;
    let mut h = [0u8; 10];
    c.read_exact(&mut h)
        .map_err(|e| format!("{method}: no answer: {e}"))?;
    let len = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize;
    let id = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
    if len > MAX_RESPONSE || h[8] != 2 || id != STREAM_ID {
        return Err(format!(
            "{method}: unexpected frame ({len} bytes, type {}, stream {id})",
            h[8]
        ));
    }
    let mut body = vec![0u8; len];
    c.read_exact(&mut body)
        .map_err(|e| format!("{method}: read: {e}"))?;
    let resp = Response::parse_from_bytes(&body).map_err(|e| format!("{method}: {e}"))?;
    match resp.status.as_ref() {
        Some(s) if s.code.value() != 0 => Err(s.message.clone()),
        _ => Ok(resp.payload),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixListener;

    use containerd_shim_protos::ttrpc::{Code, Status};

    use super::*;

    /// A one-shot server: reads one request frame, checks it, answers with `reply` (a
    /// whole frame).
    fn serve_once(reply: Vec<u8>) -> (tempfile::TempDir, String, std::thread::JoinHandle<Request>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let l = UnixListener::bind(&path).unwrap();
        let t = std::thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            let mut h = [0u8; 10];
            c.read_exact(&mut h).unwrap();
            let mut body = vec![0u8; u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize];
            c.read_exact(&mut body).unwrap();
            c.write_all(&reply).unwrap();
            Request::parse_from_bytes(&body).unwrap()
        });
        (dir, format!("unix://{}", path.display()), t)
    }

    fn response_frame(id: u32, kind: u8, resp: &Response) -> Vec<u8> {
        let body = resp.write_to_bytes().unwrap();
        let mut f = (body.len() as u32).to_be_bytes().to_vec();
        f.extend_from_slice(&id.to_be_bytes());
        f.extend_from_slice(&[kind, 0]);
        f.extend_from_slice(&body);
        f
    }

    #[test]
    fn a_rehearsal_is_asked_and_its_answer_decoded() {
        let mut ok = Response::new();
        ok.payload = br#"{"paused_us":812,"connections":3,"waits":1}"#.to_vec();
        let (_d, addr, t) = serve_once(response_frame(1, 2, &ok));
        let r = rehearse(&addr, Duration::from_millis(500)).unwrap();
        assert_eq!(
            (r.paused_us, r.connections, r.waits, r.held),
            (812, 3, 1, 0)
        );
        let req = t.join().unwrap();
        assert_eq!(
            (req.service.as_str(), req.method.as_str()),
            (SERVICE, "Rehearse")
        );
        let asked: serde_json::Value = serde_json::from_slice(&req.payload).unwrap();
        assert_eq!(asked["deadline_ms"], 500);
    }

    #[test]
    fn errors_and_odd_frames_are_reported() {
        let mut failed = Response::new();
        let mut st = Status::new();
        st.set_code(Code::FAILED_PRECONDITION);
        st.set_message("not settled within 2s".into());
        failed.status = Some(st).into();
        let (_d, addr, _t) = serve_once(response_frame(1, 2, &failed));
        let e = call(&addr, "Rehearse", b"{}", Duration::from_secs(2)).unwrap_err();
        assert_eq!(e, "not settled within 2s");
        let (_d, addr, _t) = serve_once(response_frame(3, 2, &Response::new()));
        let e = call(&addr, "Describe", b"", Duration::from_secs(2)).unwrap_err();
        assert!(e.contains("unexpected frame"), "{e}");
        let (_d, addr, _t) = serve_once(Vec::new());
        let e = call(&addr, "Describe", b"", Duration::from_secs(2)).unwrap_err();
        assert!(e.contains("no answer"), "{e}");
        let e = call(
            "unix:///nonexistent/s",
            "Describe",
            b"",
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(e.contains("connect"), "{e}");
    }
}
