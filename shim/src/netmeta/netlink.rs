//! The pod's interfaces, addresses and routes, dumped over a raw rtnetlink socket.
//!
//! Hand-rolled on libc rather than a netlink crate: the shim needs three read-only dumps
//! and a dozen attributes, and binary size is resident memory in every pod's shim
//! (docs/dependencies.md has the measurement). The socket is opened by the caller's thread,
//! so it belongs to whatever network namespace that thread is in.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use sandbox_record::{Address, Interface, Route, MAX_ADDRESSES, MAX_INTERFACES, MAX_ROUTES};

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
const NLM_F_DUMP_INTR: u16 = 0x10;
const RTM_GETLINK: u16 = 18;
const RTM_GETADDR: u16 = 22;
const RTM_GETROUTE: u16 = 26;
const NEWLINK: u16 = 16;
const NEWADDR: u16 = 20;
const NEWROUTE: u16 = 24;
const HDR: usize = 16;
const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_MTU: u16 = 4;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_PRIORITY: u16 = 6;
const RTA_PREFSRC: u16 = 7;
const RTA_TABLE: u16 = 15;
const RTN_UNICAST: u8 = 1;
const RT_TABLE_LOCAL: u32 = 255;
/// A dump interrupted by a concurrent change is retried this often before giving up.
const DUMP_TRIES: usize = 5;
/// Messages one dump reads at most: besides the kept items this bounds the time spent on
/// those a snapshot skips (the local table's routes: one per address).
pub const MAX_MESSAGES: usize = 16_384;

/// Why a dump failed.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// A socket call failed.
    #[error("rtnetlink {op}: {source}")]
    Os {
        /// The call.
        op: &'static str,
        /// The error.
        source: std::io::Error,
    },
    /// The kernel answered a dump with an error.
    #[error("rtnetlink {what} dump: kernel error: {source}")]
    Kernel {
        /// Which dump.
        what: &'static str,
        /// The errno it sent.
        source: std::io::Error,
    },
    /// A reply did not parse.
    #[error("rtnetlink {what} dump: malformed reply: {reason}")]
    Malformed {
        /// Which dump.
        what: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// The dump kept being interrupted by changes.
    #[error("rtnetlink {what} dump: interrupted {DUMP_TRIES} times by concurrent changes")]
    Interrupted {
        /// Which dump.
        what: &'static str,
    },
}

fn os(op: &'static str) -> NetlinkError {
    NetlinkError::Os {
        op,
        source: std::io::Error::last_os_error(),
    }
}

/// What one dump of a namespace found, within the limits.
#[derive(Debug, Default)]
pub struct Dump {
    /// Interfaces with their addresses, at most [`MAX_INTERFACES`] and [`MAX_ADDRESSES`].
    pub interfaces: Vec<Interface>,
    /// Routes, at most [`MAX_ROUTES`].
    pub routes: Vec<Route>,
    /// What was left out, if anything (a pod with CAP_NET_ADMIN decides how much its
    /// namespace holds).
    pub truncated: Vec<String>,
}

/// The interfaces (with their addresses) and routes of the calling thread's namespace,
/// bounded: each dump reads at most [`MAX_MESSAGES`] messages and keeps at most the
/// record's limits; what is left out is named in [`Dump::truncated`]. Messages are parsed
/// as they arrive, never collected.
pub fn dump() -> Result<Dump, NetlinkError> {
    let mut out = Dump::default();
    let links = dump_one("link", RTM_GETLINK, 16, MAX_INTERFACES, |kind, body| {
        (kind == NEWLINK).then(|| link(body)).transpose()
    })?;
    out.interfaces = links.items;
    out.truncated.extend(links.stopped);
    let addresses = dump_one("address", RTM_GETADDR, 8, MAX_ADDRESSES, |kind, body| {
        (kind == NEWADDR).then(|| address(body)).transpose()
    })?;
    out.truncated.extend(addresses.stopped);
    for (index, a) in addresses.items {
        if let Some(i) = out.interfaces.iter_mut().find(|i| i.index == index) {
            i.addresses.push(a);
        }
    }
    let interfaces = &out.interfaces;
    let routes = dump_one("route", RTM_GETROUTE, 12, MAX_ROUTES, |kind, body| {
        if kind != NEWROUTE {
            return Ok(None);
        }
        route(body, interfaces)
    })?;
    out.routes = routes.items;
    out.truncated.extend(routes.stopped);
    Ok(out)
}

/// The items one dump yielded, and why it stopped early if it did.
struct Part<T> {
    items: Vec<T>,
    stopped: Option<String>,
}

/// One complete dump of `request` on a socket of its own (whose fixed header is `fixed`
/// zero bytes: family AF_UNSPEC asks for every family), each message given to `parse`,
/// retried when the kernel flags it interrupted. Stops after `cap` items or
/// [`MAX_MESSAGES`] messages and closes the socket, which ends the kernel's dump.
fn dump_one<T>(
    what: &'static str,
    request: u16,
    fixed: usize,
    cap: usize,
    mut parse: impl FnMut(u16, &[u8]) -> Result<Option<T>, NetlinkError>,
) -> Result<Part<T>, NetlinkError> {
    for _ in 0..DUMP_TRIES {
        let sock = Socket::open()?;
        sock.request(request, fixed)?;
        let mut items = Vec::new();
        let mut messages = 0usize;
        let mut stopped = None;
        let done = sock.each(what, |kind, body| {
            messages += 1;
            if messages > MAX_MESSAGES {
                stopped = Some(format!(
                    "{what} dump: stopped after {MAX_MESSAGES} messages"
                ));
                return Ok(false);
            }
            if let Some(item) = parse(kind, body)? {
                if items.len() == cap {
                    stopped = Some(format!("{what} dump: kept the first {cap}"));
                    return Ok(false);
                }
                items.push(item);
            }
            Ok(true)
        })?;
        match (done, stopped) {
            (_, Some(why)) => {
                return Ok(Part {
                    items,
                    stopped: Some(why),
                })
            }
            (Read::Complete, None) => {
                return Ok(Part {
                    items,
                    stopped: None,
                })
            }
            (Read::Interrupted, None) => continue,
        }
    }
    Err(NetlinkError::Interrupted { what })
}

/// How a dump's replies ended.
enum Read {
    /// NLMSG_DONE, or the callback stopped.
    Complete,
    /// The kernel flagged the dump inconsistent: take it again.
    Interrupted,
}

struct Socket {
    fd: OwnedFd,
}

/// The sequence number of every request: each socket makes one.
const SEQ: u32 = 1;

impl Socket {
    fn open() -> Result<Self, NetlinkError> {
        // SAFETY: plain socket(2); the fd is owned right away.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(os("socket"));
        }
        // SAFETY: fd is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self { fd })
    }

    /// Sends a dump request of type `request` with a zeroed fixed header of `fixed` bytes.
    fn request(&self, request: u16, fixed: usize) -> Result<(), NetlinkError> {
        let mut req = vec![0u8; HDR + fixed];
        req[0..4].copy_from_slice(&((HDR + fixed) as u32).to_ne_bytes());
        req[4..6].copy_from_slice(&request.to_ne_bytes());
        req[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
        req[8..12].copy_from_slice(&SEQ.to_ne_bytes());
        // SAFETY: a zeroed sockaddr_nl is valid; nl_pid 0 addresses the kernel.
        let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: req and kernel outlive the call; lengths match.
        let sent = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                req.as_ptr().cast(),
                req.len(),
                0,
                (&kernel as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            return Err(os("sendto"));
        }
        Ok(())
    }

    /// Gives each reply message (type, body) to `f` until NLMSG_DONE or until `f` returns
    /// false.
    fn each(
        &self,
        what: &'static str,
        mut f: impl FnMut(u16, &[u8]) -> Result<bool, NetlinkError>,
    ) -> Result<Read, NetlinkError> {
        let malformed = |reason: String| NetlinkError::Malformed { what, reason };
        let mut buf = vec![0u8; 32 * 1024];
        let mut interrupted = false;
        loop {
            // SAFETY: buf is writable for its length.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(NetlinkError::Os {
                    op: "recv",
                    source: e,
                });
            }
            let mut rest = &buf[..n as usize];
            while rest.len() >= HDR {
                let len = u32::from_ne_bytes(rest[0..4].try_into().unwrap_or_default()) as usize;
                let kind = u16::from_ne_bytes([rest[4], rest[5]]);
                let flags = u16::from_ne_bytes([rest[6], rest[7]]);
                let mseq = u32::from_ne_bytes(rest[8..12].try_into().unwrap_or_default());
                if len < HDR || len > rest.len() {
                    return Err(malformed(format!("message length {len} of {}", rest.len())));
                }
                let body = &rest[HDR..len];
                rest = &rest[align(len).min(rest.len())..];
                if mseq != SEQ {
                    continue;
                }
                if flags & NLM_F_DUMP_INTR != 0 {
                    interrupted = true;
                }
                match kind {
                    NLMSG_DONE if interrupted => return Ok(Read::Interrupted),
                    NLMSG_DONE => return Ok(Read::Complete),
                    NLMSG_ERROR => {
                        let errno = body
                            .get(0..4)
                            .map(|b| i32::from_ne_bytes(b.try_into().unwrap_or_default()))
                            .ok_or_else(|| malformed("short error message".into()))?;
                        if errno == 0 {
                            continue;
                        }
                        return Err(NetlinkError::Kernel {
                            what,
                            source: std::io::Error::from_raw_os_error(-errno),
                        });
                    }
                    _ => {
                        if !f(kind, body)? {
                            return Ok(Read::Complete);
                        }
                    }
                }
            }
        }
    }
}

fn align(n: usize) -> usize {
    (n + 3) & !3
}

/// The attributes after a fixed header of `fixed` bytes: (type, payload).
fn attrs(body: &[u8], fixed: usize) -> impl Iterator<Item = (u16, &[u8])> {
    let mut rest = body.get(fixed..).unwrap_or_default();
    std::iter::from_fn(move || {
        if rest.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([rest[0], rest[1]]) as usize;
        // The top bits are NLA_F_NESTED / NLA_F_NET_BYTEORDER, not part of the type.
        let kind = u16::from_ne_bytes([rest[2], rest[3]]) & 0x3fff;
        if len < 4 || len > rest.len() {
            return None;
        }
        let payload = &rest[4..len];
        rest = &rest[align(len).min(rest.len())..];
        Some((kind, payload))
    })
}

fn u32_of(p: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(p.get(0..4)?.try_into().ok()?))
}

fn ip_of(p: &[u8]) -> Option<String> {
    match p.len() {
        4 => Some(Ipv4Addr::from(<[u8; 4]>::try_from(p).ok()?).to_string()),
        16 => Some(Ipv6Addr::from(<[u8; 16]>::try_from(p).ok()?).to_string()),
        _ => None,
    }
}

fn scope_name(scope: u8) -> String {
    match scope {
        0 => "global".into(),
        200 => "site".into(),
        253 => "link".into(),
        254 => "host".into(),
        255 => "nowhere".into(),
        n => n.to_string(),
    }
}

fn short(what: &'static str, body: &[u8], need: usize) -> Result<(), NetlinkError> {
    if body.len() < need {
        return Err(NetlinkError::Malformed {
            what,
            reason: format!("{} bytes, header needs {need}", body.len()),
        });
    }
    Ok(())
}

/// An RTM_NEWLINK body: ifinfomsg (16 bytes) and attributes.
fn link(body: &[u8]) -> Result<Interface, NetlinkError> {
    short("link", body, 16)?;
    let index = u32_of(&body[4..8]).unwrap_or_default();
    let flags = u32_of(&body[8..12]).unwrap_or_default();
    let mut i = Interface {
        index,
        name: String::new(),
        mac: String::new(),
        mtu: 0,
        up: flags & libc::IFF_UP as u32 != 0,
        addresses: Vec::new(),
    };
    for (kind, p) in attrs(body, 16) {
        match kind {
            IFLA_IFNAME => {
                let end = p.iter().position(|b| *b == 0).unwrap_or(p.len());
                i.name = String::from_utf8_lossy(&p[..end]).into_owned();
            }
            IFLA_ADDRESS => {
                i.mac = p
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<Vec<_>>()
                    .join(":");
            }
            IFLA_MTU => i.mtu = u32_of(p).unwrap_or_default(),
            _ => {}
        }
    }
    Ok(i)
}

/// An RTM_NEWADDR body: ifaddrmsg (8 bytes) and attributes; (interface index, address).
fn address(body: &[u8]) -> Result<(u32, Address), NetlinkError> {
    short("address", body, 8)?;
    let (prefix, scope) = (body[1], body[3]);
    let index = u32_of(&body[4..8]).unwrap_or_default();
    let (mut local, mut addr) = (None, None);
    for (kind, p) in attrs(body, 8) {
        match kind {
            IFA_LOCAL => local = ip_of(p),
            IFA_ADDRESS => addr = ip_of(p),
            _ => {}
        }
    }
    // On point-to-point links IFA_ADDRESS is the peer; IFA_LOCAL is ours when present.
    let ip = local.or(addr).ok_or_else(|| NetlinkError::Malformed {
        what: "address",
        reason: format!("address of interface {index} has no IP"),
    })?;
    Ok((
        index,
        Address {
            ip,
            prefix,
            scope: scope_name(scope),
        },
    ))
}

/// An RTM_NEWROUTE body: rtmsg (12 bytes) and attributes. Only unicast routes outside the
/// kernel's local table are kept: the rest is derived from the addresses.
fn route(body: &[u8], interfaces: &[Interface]) -> Result<Option<Route>, NetlinkError> {
    short("route", body, 12)?;
    let family = body[0];
    let dst_len = body[1];
    let (mut table, scope, kind) = (u32::from(body[4]), body[6], body[7]);
    if kind != RTN_UNICAST {
        return Ok(None);
    }
    let (mut dst, mut gateway, mut oif, mut source, mut metric) = (None, None, None, None, 0);
    for (k, p) in attrs(body, 12) {
        match k {
            RTA_DST => dst = ip_of(p),
            RTA_GATEWAY => gateway = ip_of(p),
            RTA_PREFSRC => source = ip_of(p),
            RTA_OIF => oif = u32_of(p),
            RTA_PRIORITY => metric = u32_of(p).unwrap_or_default(),
            RTA_TABLE => table = u32_of(p).unwrap_or(table),
            _ => {}
        }
    }
    if table == RT_TABLE_LOCAL {
        return Ok(None);
    }
    let dst = dst.unwrap_or_else(|| {
        if family == libc::AF_INET6 as u8 {
            "::".into()
        } else {
            "0.0.0.0".into()
        }
    });
    Ok(Some(Route {
        destination: format!("{dst}/{dst_len}"),
        gateway,
        interface: oif.map(|index| {
            interfaces
                .iter()
                .find(|i| i.index == index)
                .map(|i| i.name.clone())
                .unwrap_or_else(|| format!("#{index}"))
        }),
        source,
        table,
        metric,
        scope: scope_name(scope),
    }))
}

#[cfg(test)]
mod tests;
