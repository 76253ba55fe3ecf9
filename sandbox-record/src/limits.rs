//! How much of a pod's network a record keeps. A pod with CAP_NET_ADMIN decides what its
//! namespace holds (10^5 addresses or routes are a few shell lines), and every record is
//! read by the shim at each snapshot and by the watchdog, whose memory limit is 64 Mi: so
//! the snapshot keeps at most [`MAX_INTERFACES`], [`MAX_ADDRESSES`] and [`MAX_ROUTES`],
//! and a record file is at most [`MAX_RECORD_BYTES`]. What does not fit is left out and
//! named in [`Record::truncated`], which `sturdyctl sandboxes` shows.

use std::io::Write;

use crate::error::RecordError;
use crate::model::{Network, Record, POD_INTERFACE};

/// Largest record file written or read (1 MiB). A larger file is corrupt.
pub const MAX_RECORD_BYTES: usize = 1 << 20;
/// Interfaces one snapshot keeps.
pub const MAX_INTERFACES: usize = 4096;
/// Addresses one snapshot keeps, all interfaces together.
pub const MAX_ADDRESSES: usize = 4096;
/// Routes one snapshot keeps.
pub const MAX_ROUTES: usize = 4096;
/// Room left in [`MAX_RECORD_BYTES`] for the file's envelope (format, version, checksum).
const ENVELOPE: usize = 256;
/// Room kept for the note [`Record::fit`] adds (and the odd comma its count is off by).
const NOTE_ROOM: usize = 256;

/// Counts the bytes serde_json would write, without keeping them.
#[derive(Default)]
struct Count(usize);

impl Write for Count {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The compact JSON size of `v`, which is also the size of its canonical form (the same
/// bytes, only the order of object keys differs).
fn size_of<T: serde::Serialize + ?Sized>(v: &T) -> usize {
    let mut c = Count::default();
    // Serialising the record's plain types into a counter cannot fail.
    let _ = serde_json::to_writer(&mut c, v);
    c.0
}

/// Appends `note` to a record's `truncated`.
pub fn note_truncated(record: &mut Record, note: &str) {
    match &mut record.truncated {
        Some(t) => {
            t.push_str("; ");
            t.push_str(note);
        }
        None => record.truncated = Some(note.to_string()),
    }
}

impl Record {
    /// Leaves out what does not fit in a [`MAX_RECORD_BYTES`] file, least useful first:
    /// routes, then the addresses and interfaces other than `lo` and the pod interface,
    /// then the pod interface's addresses after its first (CNI's come first: the kernel
    /// lists addresses in the order they were added). Notes what went in `truncated`.
    pub fn fit(&mut self) -> Result<(), RecordError> {
        let limit = MAX_RECORD_BYTES - ENVELOPE;
        let mut size = size_of(self);
        if size <= limit {
            return Ok(());
        }
        let budget = limit - NOTE_ROOM;
        let (mut routes_cut, mut addrs_cut, mut ifs_cut) = (0usize, 0usize, 0usize);
        if let Network::Namespace {
            interfaces, routes, ..
        } = &mut self.network
        {
            while size > budget {
                let Some(r) = routes.pop() else { break };
                // Each element but the last has a comma before the next.
                size -= size_of(&r) + usize::from(!routes.is_empty());
                routes_cut += 1;
            }
            let kept = |name: &str| name == "lo" || name == POD_INTERFACE;
            while size > budget {
                let Some(i) = interfaces.iter().rposition(|i| !kept(&i.name)) else {
                    break;
                };
                let addresses = &mut interfaces[i].addresses;
                match addresses.pop() {
                    Some(a) => {
                        size -= size_of(&a) + usize::from(!addresses.is_empty());
                        addrs_cut += 1;
                    }
                    None => {
                        size -=
                            size_of(&interfaces.remove(i)) + usize::from(!interfaces.is_empty());
                        ifs_cut += 1;
                    }
                }
            }
            for i in interfaces.iter_mut().filter(|i| kept(&i.name)) {
                while size > budget && i.addresses.len() > 1 {
                    if let Some(a) = i.addresses.pop() {
                        size -= size_of(&a) + 1;
                        addrs_cut += 1;
                    }
                }
            }
        }
        if size > budget {
            return Err(RecordError::TooLarge {
                id: self.sandbox_id.clone(),
                bytes: size,
            });
        }
        note_truncated(
            self,
            &format!(
                "left out to fit {MAX_RECORD_BYTES} bytes: {routes_cut} routes, \
                 {addrs_cut} addresses, {ifs_cut} interfaces"
            ),
        );
        // The note itself takes room: make sure the whole still fits.
        if size_of(self) > limit {
            return Err(RecordError::TooLarge {
                id: self.sandbox_id.clone(),
                bytes: size_of(self),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format;
    use crate::model::tests::{addr, iface, sample};
    use crate::model::Route;

    fn route(n: usize) -> Route {
        Route {
            destination: format!("10.{}.{}.0/24", n / 256 % 256, n % 256),
            gateway: Some("198.18.0.49".into()),
            interface: Some("eth0".into()),
            source: Some("198.18.0.50".into()),
            table: 254,
            metric: 100,
            scope: "global".into(),
        }
    }

    #[test]
    fn a_record_that_fits_is_left_alone() {
        let mut r = sample("s");
        let before = r.clone();
        r.fit().unwrap();
        assert_eq!(r, before);
        assert!(r.truncated.is_none());
    }

    #[test]
    fn routes_then_other_interfaces_go_first_and_the_pod_ip_stays() {
        let mut r = sample("s");
        if let Network::Namespace {
            interfaces, routes, ..
        } = &mut r.network
        {
            routes.extend((0..MAX_ROUTES).map(route));
            interfaces[1].addresses.extend(
                (0..MAX_ADDRESSES)
                    .map(|n| addr(&format!("10.9.{}.{}", n / 256, n % 256), 32, "global")),
            );
            for n in 0..2000 {
                interfaces.push(iface(
                    100 + n,
                    &format!("x{n}"),
                    (0..10)
                        .map(|k| addr(&format!("fd00:{n:x}::{k:x}"), 128, "global"))
                        .collect(),
                ));
            }
        }
        assert!(matches!(
            format::encode(&r),
            Err(RecordError::TooLarge { .. })
        ));
        r.fit().unwrap();
        let bytes = format::encode(&r).unwrap();
        assert!(bytes.len() <= MAX_RECORD_BYTES, "{}", bytes.len());
        assert_eq!(r.pod_ips()[0], "198.18.0.50");
        let note = r.truncated.clone().unwrap();
        assert!(note.contains("routes"), "{note}");
        let Network::Namespace {
            interfaces, routes, ..
        } = &r.network
        else {
            unreachable!()
        };
        assert!(routes.is_empty(), "routes go before any address");
        // Then the other interfaces' addresses, from the last interface back.
        assert!(interfaces.iter().any(|i| i.name == "x0"));
        assert!(!interfaces.iter().any(|i| i.name == "x1999"));
        let eth0 = interfaces.iter().find(|i| i.name == "eth0").unwrap();
        assert_eq!(
            eth0.addresses.len(),
            3 + MAX_ADDRESSES,
            "the pod interface kept all"
        );
        // The record still decodes as what was kept.
        let back = format::decode(std::path::Path::new("/r"), &bytes).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn notes_accumulate() {
        let mut r = sample("s");
        note_truncated(&mut r, "a");
        note_truncated(&mut r, "b");
        assert_eq!(r.truncated.as_deref(), Some("a; b"));
    }
}
