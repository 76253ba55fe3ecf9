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
        /// The version a successful Connect reply named (`-v`'s version).
        version: Option<String>,
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
pub fn connect_frame(id: &str, stream_id: u32, deadline: Duration) -> Vec<u8> {
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
    frame.extend_from_slice(&stream_id.to_be_bytes());
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

/// The version a successful Connect reply names, if any.
pub fn decode_version(body: &[u8]) -> Option<String> {
    let resp = Response::parse_from_bytes(body).ok()?;
    if resp.status.as_ref().is_some_and(|s| s.code.value() != 0) {
        return None;
    }
    ConnectResponse::parse_from_bytes(&resp.payload)
        .ok()
        .map(|c| c.version)
        .filter(|v| !v.is_empty())
}

/// Probes the shim at `address` once, on a fresh connection, asking about task `id`,
/// within `deadline`.
pub async fn probe(address: &str, id: &str, deadline: Duration) -> Outcome {
    Prober::new().probe(address, id, deadline).await
}

/// Probes one shim again and again over one kept connection.
///
/// A connect, accept and close per probe was most of an idle watchdog's CPU time (100
/// shims every 2 s). The connection is dropped after any miss, so a late reply to an
/// unanswered probe is never taken for the answer to the next one, and each probe after a
/// miss starts on a fresh connection, exactly like a one-shot probe. A kept connection the
/// shim has closed (it restarted its listener, or reaps idle clients) is not a miss: the
/// probe reconnects once within the same deadline.
#[derive(Debug, Default)]
pub struct Prober {
    conn: Option<Kept>,
}

#[derive(Debug)]
struct Kept {
    address: String,
    stream: UnixStream,
    /// The next request's stream id: clients use odd ids, increasing.
    next_id: u32,
    /// Whether the framing is still known, so the connection can serve the next probe.
    reusable: bool,
}

impl Prober {
    /// A prober with no connection yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether a connection is kept for the next probe.
    pub fn connected(&self) -> bool {
        self.conn.is_some()
    }

    /// Probes the shim at `address` once, asking about task `id`, within `deadline`.
    pub async fn probe(&mut self, address: &str, id: &str, deadline: Duration) -> Outcome {
        let started = Instant::now();
        // Taken out for the exchange: a deadline that drops it leaves no connection.
        let kept = self.conn.take().filter(|k| k.address == address);
        match tokio::time::timeout(deadline, exchange(kept, address, id, deadline)).await {
            Err(_) => Outcome::NoReply,
            Ok(Err(Failure::Refused(e))) => Outcome::Refused(e),
            // The shim closed or garbled the connection: it is alive enough to do that, but
            // it did not answer either; that is a miss, not a death (the pidfd tells deaths).
            Ok(Err(Failure::Broken(_))) => Outcome::NoReply,
            Ok(Ok((kept, (shim_pid, status, version)))) => {
                // Stream ids 1 and 3 answered: once per connection, the sign that probes
                // really reuse it (tests wait for this line).
                if kept.next_id == 5 {
                    log::debug!("shim {address}: a second probe answered on a kept connection");
                }
                self.conn = Some(kept).filter(|k| k.reusable);
                Outcome::Answered {
                    latency: started.elapsed(),
                    shim_pid,
                    status,
                    version,
                }
            }
        }
    }
}

enum Failure {
    Refused(String),
    Broken(#[allow(dead_code)] String),
}

type Reply = (Option<u32>, Option<String>, Option<String>);

async fn exchange(
    kept: Option<Kept>,
    address: &str,
    id: &str,
    deadline: Duration,
) -> Result<(Kept, Reply), Failure> {
    if let Some(mut kept) = kept {
        match round_trip(&mut kept, id, deadline).await {
            Ok(reply) => return Ok((kept, reply)),
            // Closed before any reply byte: the shim let go of an idle connection.
            Err(Trip::Closed) => {}
            Err(Trip::Broken(e)) => return Err(Failure::Broken(e)),
        }
    }
    let path = socket_path(address);
    let stream = UnixStream::connect(&path)
        .await
        .map_err(|e| Failure::Refused(format!("connect {address}: {e}")))?;
    let mut kept = Kept {
        address: address.to_string(),
        stream,
        next_id: 1,
        reusable: true,
    };
    match round_trip(&mut kept, id, deadline).await {
        Ok(reply) => Ok((kept, reply)),
        Err(Trip::Closed) => Err(Failure::Broken("closed without a reply".into())),
        Err(Trip::Broken(e)) => Err(Failure::Broken(e)),
    }
}

enum Trip {
    /// Write failed or end of stream before the first byte of a reply.
    Closed,
    Broken(String),
}

/// One request and its reply on `kept`; frames of other streams are skipped.
async fn round_trip(kept: &mut Kept, id: &str, deadline: Duration) -> Result<Reply, Trip> {
    let stream_id = kept.next_id;
    // Ids must increase: a connection that runs out of them is replaced.
    match stream_id.checked_add(2) {
        Some(next) => kept.next_id = next,
        None => kept.reusable = false,
    }
    let stream = &mut kept.stream;
    stream
        .write_all(&connect_frame(id, stream_id, deadline))
        .await
        .map_err(|_| Trip::Closed)?;
    let mut first = true;
    loop {
        let mut header = [0u8; HEADER_LEN];
        match stream.read_exact(&mut header).await {
            Ok(_) => {}
            Err(e) if first && closed(&e) => return Err(Trip::Closed),
            Err(e) => return Err(Trip::Broken(format!("read header: {e}"))),
        }
        first = false;
        let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let reply_id = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
        if len > MAX_REPLY {
            // Still a reply from a live shim; do not read it (nor keep the connection, whose
            // framing is now lost).
            kept.reusable = false;
            return Ok((None, Some(format!("{len}-byte reply")), None));
        }
        let mut body = vec![0u8; len];
        stream
            .read_exact(&mut body)
            .await
            .map_err(|e| Trip::Broken(format!("read body: {e}")))?;
        if header[8] == TYPE_RESPONSE && reply_id == stream_id {
            let (pid, status) = decode_reply(&body);
            return Ok((pid, status, decode_version(&body)));
        }
    }
}

fn closed(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        UnexpectedEof | ConnectionReset | BrokenPipe | ConnectionAborted
    )
}

#[cfg(test)]
mod tests;
