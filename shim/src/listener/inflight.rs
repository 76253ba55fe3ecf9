//! Which requests of one connection are still unanswered, recorded where the guard sees
//! them pass: request frames on their way in to ttrpc, response frames on their way out.
//!
//! A live upgrade hands over a connection with its unanswered requests; the next image
//! reads them again before anything new from the socket ([`super::resume`]), so ttrpc
//! serves them again on the same stream ids and the client gets its answer on the same
//! connection. Only requests that are safe to serve twice may still be unanswered then
//! (a blocking `Wait`): lifecycle calls in flight are finished before the handover.
//! A request larger than [`KEPT_FRAME`] is not kept, only noted: a connection with one
//! unanswered cannot be handed over (no containerd request comes near it).

use std::sync::{Arc, Mutex, MutexGuard};

use containerd_shim_protos::protobuf::Message;
use containerd_shim_protos::ttrpc::Request as WireRequest;

use super::frames::HEADER_LEN;
use super::SMALL_FRAME;

/// Largest request payload kept for a replay.
pub const KEPT_FRAME: usize = SMALL_FRAME;
/// The requests that may be served a second time by the next image: they only wait for
/// and report what is already decided (a process's exit). Anything else unanswered means a
/// call is still in flight, and the handover waits for its answer.
pub const REPLAY_SAFE: &[&str] = &[
    "containerd.task.v2.Task/Wait",
    "containerd.task.v3.Task/Wait",
];
/// ttrpc frame types.
const TYPE_REQUEST: u8 = 1;
const TYPE_RESPONSE: u8 = 2;

/// One connection's unanswered requests.
#[derive(Debug, Default)]
pub struct InFlight {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Unanswered requests, in arrival order.
    requests: Vec<Request>,
    /// The request whose payload is passing in now.
    current: Option<Request>,
    /// Where the outgoing bytes stand in their framing.
    out: Out,
}

#[derive(Debug)]
struct Request {
    stream_id: u32,
    /// The whole frame, or `None` if it was too large to keep.
    frame: Option<Vec<u8>>,
}

#[derive(Debug)]
enum Out {
    Header([u8; HEADER_LEN], usize),
    Payload(usize),
}

impl Default for Out {
    fn default() -> Self {
        Out::Header([0; HEADER_LEN], 0)
    }
}

/// Why a connection's unanswered requests cannot be replayed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("request on stream {stream_id} is unanswered and larger than {KEPT_FRAME} bytes")]
pub struct Unreplayable {
    /// Its stream id.
    pub stream_id: u32,
}

impl InFlight {
    /// A tracker shared by a connection's guard and the upgrade gate.
    pub fn new() -> Arc<InFlight> {
        Arc::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A frame's whole header was handed to ttrpc.
    pub fn frame_started(&self, header: &[u8; HEADER_LEN]) {
        let mut s = self.lock();
        let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let stream_id = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
        s.current = (header[8] == TYPE_REQUEST).then(|| Request {
            stream_id,
            frame: (len <= KEPT_FRAME).then(|| {
                let mut f = Vec::with_capacity(HEADER_LEN + len);
                f.extend_from_slice(header);
                f
            }),
        });
        if len == 0 {
            s.finish();
        }
    }

    /// Payload bytes of the current frame were handed to ttrpc.
    pub fn payload(&self, bytes: &[u8]) {
        if let Some(Request { frame: Some(f), .. }) = &mut self.lock().current {
            f.extend_from_slice(bytes);
        }
    }

    /// The current frame's last payload byte was handed to ttrpc.
    pub fn frame_done(&self) {
        self.lock().finish();
    }

    /// Bytes ttrpc wrote to the connection: a response's header answers its stream.
    pub fn written(&self, mut bytes: &[u8]) {
        let mut s = self.lock();
        while !bytes.is_empty() {
            match &mut s.out {
                Out::Payload(left) => {
                    let n = (*left).min(bytes.len());
                    *left -= n;
                    bytes = &bytes[n..];
                    if *left == 0 {
                        s.out = Out::default();
                    }
                }
                Out::Header(h, have) => {
                    let n = (HEADER_LEN - *have).min(bytes.len());
                    h[*have..*have + n].copy_from_slice(&bytes[..n]);
                    *have += n;
                    bytes = &bytes[n..];
                    if *have < HEADER_LEN {
                        continue;
                    }
                    let h = *h;
                    let len = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize;
                    if h[8] == TYPE_RESPONSE {
                        let id = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
                        s.requests.retain(|r| r.stream_id != id);
                    }
                    s.out = if len == 0 {
                        Out::default()
                    } else {
                        Out::Payload(len)
                    };
                }
            }
        }
    }

    /// The unanswered requests' frames, in arrival order, ready to be read again.
    pub fn pending(&self) -> Result<Vec<Vec<u8>>, Unreplayable> {
        self.lock()
            .requests
            .iter()
            .map(|r| {
                r.frame.clone().ok_or(Unreplayable {
                    stream_id: r.stream_id,
                })
            })
            .collect()
    }
}

/// `service/method` of a whole request frame, if it decodes.
pub fn method_of(frame: &[u8]) -> Option<String> {
    let req = WireRequest::parse_from_bytes(frame.get(HEADER_LEN..)?).ok()?;
    Some(format!("{}/{}", req.service, req.method))
}

/// Whether a request frame may be served again by the next image ([`REPLAY_SAFE`]).
pub fn replay_safe(frame: &[u8]) -> bool {
    method_of(frame).is_some_and(|m| REPLAY_SAFE.contains(&m.as_str()))
}

impl State {
    fn finish(&mut self) {
        if let Some(r) = self.current.take() {
            self.requests.push(r);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, len: u32, id: u32) -> Vec<u8> {
        let mut f = len.to_be_bytes().to_vec();
        f.extend_from_slice(&id.to_be_bytes());
        f.extend_from_slice(&[kind, 0]);
        f.resize(HEADER_LEN + len as usize, id as u8);
        f
    }

    fn arrive(t: &InFlight, f: &[u8], chunk: usize) {
        t.frame_started(f[..HEADER_LEN].try_into().unwrap());
        let payload = &f[HEADER_LEN..];
        for c in payload.chunks(chunk.max(1)) {
            t.payload(c);
        }
        if !payload.is_empty() {
            t.frame_done();
        }
    }

    #[test]
    fn an_answered_request_is_no_longer_pending_an_unanswered_one_is_kept_whole() {
        let t = InFlight::new();
        let wait = frame(TYPE_REQUEST, 40, 1);
        let state = frame(TYPE_REQUEST, 7, 3);
        arrive(&t, &wait, 6);
        arrive(&t, &state, 1);
        assert_eq!(t.pending().unwrap(), vec![wait.clone(), state.clone()]);
        // The response to stream 3 goes out in odd pieces, header split.
        let resp = frame(TYPE_RESPONSE, 25, 3);
        for c in resp.chunks(4) {
            t.written(c);
        }
        assert_eq!(t.pending().unwrap(), vec![wait.clone()]);
        // A response's payload that looks like a header answers nothing.
        let tricky = {
            let mut p = frame(TYPE_RESPONSE, 10, 9);
            p[HEADER_LEN..].copy_from_slice(&frame(TYPE_RESPONSE, 0, 1));
            p
        };
        t.written(&tricky);
        assert_eq!(t.pending().unwrap(), vec![wait]);
        t.written(&frame(TYPE_RESPONSE, 0, 1));
        assert!(t.pending().unwrap().is_empty());
    }

    #[test]
    fn empty_and_non_request_frames() {
        let t = InFlight::new();
        arrive(&t, &frame(TYPE_REQUEST, 0, 5), 1);
        arrive(&t, &frame(3, 4, 7), 1);
        assert_eq!(t.pending().unwrap(), vec![frame(TYPE_REQUEST, 0, 5)]);
    }

    fn request(service: &str, method: &str, id: u32) -> Vec<u8> {
        let mut r = WireRequest::new();
        r.service = service.into();
        r.method = method.into();
        r.payload = vec![1, 2, 3];
        let body = r.write_to_bytes().unwrap();
        let mut f = (body.len() as u32).to_be_bytes().to_vec();
        f.extend_from_slice(&id.to_be_bytes());
        f.extend_from_slice(&[TYPE_REQUEST, 0]);
        f.extend_from_slice(&body);
        f
    }

    #[test]
    fn only_waits_are_safe_to_serve_twice() {
        for v in ["containerd.task.v2.Task", "containerd.task.v3.Task"] {
            let wait = request(v, "Wait", 1);
            assert_eq!(method_of(&wait), Some(format!("{v}/Wait")));
            assert!(replay_safe(&wait));
            for m in ["Create", "Start", "Kill", "Delete", "Exec", "State"] {
                assert!(!replay_safe(&request(v, m, 3)), "{v}/{m}");
            }
        }
        assert!(!replay_safe(&request("other.Service", "Wait", 5)));
        assert!(!replay_safe(&frame(TYPE_REQUEST, 4, 7)), "undecodable");
        assert!(!replay_safe(&[0u8; 3]));
    }

    #[test]
    fn a_large_unanswered_request_cannot_be_replayed() {
        let t = InFlight::new();
        let big = frame(TYPE_REQUEST, KEPT_FRAME as u32 + 1, 11);
        arrive(&t, &big, 4096);
        assert_eq!(t.pending(), Err(Unreplayable { stream_id: 11 }));
        t.written(&frame(TYPE_RESPONSE, 2, 11));
        assert_eq!(t.pending(), Ok(vec![]));
    }
}
