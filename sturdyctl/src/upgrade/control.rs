//! Calls of the shim's upgrade service (`sturdy.upgrade.v1.Upgrade`, docs/upgrade.md) on
//! its socket: one request frame written by hand, one response read, under a deadline.
//! The service's payloads are JSON.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use containerd_shim_protos::protobuf::Message;
use containerd_shim_protos::ttrpc::{Code, Request, Response};
use serde::{Deserialize, Serialize};

use crate::probe::socket_path;

/// The service's name.
pub const SERVICE: &str = "sturdy.upgrade.v1.Upgrade";
/// Largest response read.
/// Largest response read: a rehearsal may carry the handover document (at most 1 MiB,
/// escaped into a JSON string).
const MAX_RESPONSE: usize = 4 << 20;
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
    /// Asked with `dump_for`: the handover document the shim's live state makes (JSON), or
    /// why it has none. Not printed: `live_state` says what became of it.
    #[serde(default, skip_serializing)]
    pub document: Option<Result<String, String>>,
    /// What the new binary's `--check-handover` said of `document`.
    #[serde(default)]
    pub live_state: Option<serde_json::Value>,
}

/// Asks the shim at `address` to rehearse an upgrade's pause, settling within `settle`;
/// with `dump_for` (a build-id), to answer the document an upgrade to it would write.
pub fn rehearse(
    address: &str,
    settle: Duration,
    dump_for: Option<&str>,
) -> Result<Rehearsal, String> {
    let mut req = serde_json::json!({ "deadline_ms": settle.as_millis() as u64 });
    if let Some(target) = dump_for {
        req["dump_for"] = target.into();
    }
    let answer = call(
        address,
        "Rehearse",
        req.to_string().as_bytes(),
        settle + Duration::from_secs(2),
    )?;
    serde_json::from_slice(&answer).map_err(|e| format!("Rehearse answer: {e}"))
}

/// The longest settle deadline the shim accepts for `Upgrade`.
pub const MAX_SETTLE: Duration = Duration::from_secs(10);
/// How much longer than its settle deadline an `Upgrade` may take to be answered: the state
/// written, the exec, the new image rebuilt (or, failing that, the old one re-executed).
pub const UPGRADE_GRACE: Duration = Duration::from_secs(10);

/// What `Upgrade` reports. The new image answers it (the request is replayed to it after
/// the exec), so this is the new image's word on what it took over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Upgraded {
    /// The shim's pid, which the exec keeps.
    pub pid: i32,
    /// The version it ran before.
    pub old_version: String,
    /// The build it ran before.
    pub old_build_id: String,
    /// The version it runs now.
    pub new_version: String,
    /// The build it runs now.
    pub new_build_id: String,
    /// From the pause's start to the new image serving, microseconds (0: nothing to do).
    pub paused_us: u64,
    /// Processes whose lifecycle the pause held.
    pub held: usize,
    /// Connections handed over.
    pub connections: usize,
    /// Unanswered `Wait`s replayed to the new image.
    pub waits: usize,
}

/// Asks the shim at `address` to move in place onto `binary`, whose build-id sturdyctl
/// checked is `build_id`, settling within `settle` (at most [`MAX_SETTLE`]). The shim
/// opens the path itself and refuses a file of another build, so `binary` must be the
/// resolved path of the file that was checked. A refusal, a rollback or a pause that did
/// not settle comes back as the shim's message.
pub fn upgrade(
    address: &str,
    binary: &Path,
    build_id: &str,
    settle: Duration,
) -> Result<Upgraded, String> {
    let settle = settle.min(MAX_SETTLE);
    let binary = binary
        .to_str()
        .ok_or_else(|| format!("{}: not a UTF-8 path", binary.display()))?;
    let req = serde_json::json!({
        "binary": binary,
        "build_id": build_id,
        "deadline_ms": settle.as_millis() as u64,
    });
    let answer = call(
        address,
        "Upgrade",
        req.to_string().as_bytes(),
        settle + UPGRADE_GRACE,
    )?;
    serde_json::from_slice(&answer).map_err(|e| format!("Upgrade answer: {e}"))
}

/// Calls `method` with `payload`; the answer's payload, or the shim's error: the message
/// alone for FAILED_PRECONDITION (the service's own refusals, whose prefixes mean
/// something), led by the code otherwise (an older shim's UNIMPLEMENTED, say).
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
        Some(s) if s.code.value() != 0 => Err(match s.code.enum_value() {
            Ok(Code::FAILED_PRECONDITION) => s.message.clone(),
            Ok(code) => format!("{code:?}: {}", s.message),
            Err(n) => format!("code {n}: {}", s.message),
        }),
        _ => Ok(resp.payload),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixListener;

    use containerd_shim_protos::ttrpc::Status;

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
        let r = rehearse(&addr, Duration::from_millis(500), None).unwrap();
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
    fn an_upgrade_is_asked_with_the_checked_binary_and_its_answer_decoded() {
        let answer = serde_json::json!({
            "pid": 4242, "old_version": "0.1.0", "old_build_id": "aa01",
            "new_version": "0.1.1", "new_build_id": "bb02", "paused_us": 12345,
            "held": 2, "connections": 3, "waits": 2,
        });
        let mut ok = Response::new();
        ok.payload = answer.to_string().into_bytes();
        let (_d, addr, t) = serve_once(response_frame(1, 2, &ok));
        let bin = Path::new("/usr/local/lib/sturdy/bb02/containerd-shim-sturdy-v2");
        let u = upgrade(&addr, bin, "bb02", Duration::from_secs(2)).unwrap();
        assert_eq!(
            (u.pid, u.old_build_id.as_str(), u.new_build_id.as_str()),
            (4242, "aa01", "bb02")
        );
        assert_eq!(
            (u.paused_us, u.held, u.connections, u.waits),
            (12345, 2, 3, 2)
        );
        let req = t.join().unwrap();
        assert_eq!(
            (req.service.as_str(), req.method.as_str()),
            (SERVICE, "Upgrade")
        );
        let asked: serde_json::Value = serde_json::from_slice(&req.payload).unwrap();
        assert_eq!(
            asked,
            serde_json::json!({
                "binary": bin.to_str().unwrap(),
                "build_id": "bb02",
                "deadline_ms": 2000,
            })
        );
        // The call waits for the exec and the new image's answer well past the settle.
        assert_eq!(
            req.timeout_nano as u128,
            (Duration::from_secs(2) + UPGRADE_GRACE).as_nanos()
        );
    }

    #[test]
    fn an_upgrade_never_asks_more_than_the_shim_accepts_and_reports_its_refusal() {
        let mut failed = Response::new();
        let mut st = Status::new();
        st.set_code(Code::FAILED_PRECONDITION);
        st.set_message("rolled back: the new image did not resume: test hook".into());
        failed.status = Some(st).into();
        let (_d, addr, t) = serve_once(response_frame(1, 2, &failed));
        let e = upgrade(&addr, Path::new("/x/shim"), "bb02", Duration::from_secs(60)).unwrap_err();
        assert_eq!(e, "rolled back: the new image did not resume: test hook");
        let asked: serde_json::Value = serde_json::from_slice(&t.join().unwrap().payload).unwrap();
        assert_eq!(asked["deadline_ms"], MAX_SETTLE.as_millis() as u64);
        // An answer that is not the contract's is an error, not a zeroed success.
        let mut odd = Response::new();
        odd.payload = br#"{"paused_us":1}"#.to_vec();
        let (_d, addr, _t) = serve_once(response_frame(1, 2, &odd));
        let e = upgrade(&addr, Path::new("/x/shim"), "bb02", Duration::from_secs(1)).unwrap_err();
        assert!(e.starts_with("Upgrade answer:"), "{e}");
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
        // A shim from before Upgrade: the code says why, and no prefix of the contract.
        let mut old = Response::new();
        let mut st = Status::new();
        st.set_code(Code::UNIMPLEMENTED);
        st.set_message("/sturdy.upgrade.v1.Upgrade/Upgrade is not supported".into());
        old.status = Some(st).into();
        let (_d, addr, _t) = serve_once(response_frame(1, 2, &old));
        let e = upgrade(&addr, Path::new("/x/shim"), "bb02", Duration::from_secs(1)).unwrap_err();
        assert!(e.starts_with("UNIMPLEMENTED: "), "{e}");
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
