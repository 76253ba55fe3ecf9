//! The `uidmap=`/`gidmap=` mount options containerd 2.x's snapshotters add to the rootfs
//! mounts of a pod with its own user namespace (`hostUsers: false`).
//!
//! Each value is a comma-separated list of `container:host:size` ranges, the format of the
//! snapshot labels `containerd.io/snapshot/uidmapping` and `gidmapping` they are copied
//! from. The values come from containerd over the socket, so they are bounded and checked
//! here as strictly as the kernel will check them when they are written to `uid_map`, to
//! fail with a message that names the option instead of an EINVAL from a later write.

use std::fmt::Write as _;

/// Most ranges one map may hold: the kernel's limit for `uid_map`/`gid_map`
/// (UID_GID_MAP_MAX_EXTENTS). CRI sends one.
pub const MAX_RANGES: usize = 340;
/// Longest piece of an option echoed back in an error.
const ECHO_LIMIT: usize = 48;

/// One `container:host:size` range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    /// First id inside the namespace.
    pub container: u32,
    /// The host id `container` stands for.
    pub host: u32,
    /// How many consecutive ids.
    pub size: u32,
}

/// The uid and gid mappings of one mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdMaps {
    pub uid: Vec<Range>,
    pub gid: Vec<Range>,
}

/// Why `uidmap=`/`gidmap=` options cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdMapError {
    #[error("{option}= is given more than once")]
    Duplicate { option: &'static str },
    #[error("{option}= without {missing}=: an idmapped mount needs both")]
    Unpaired {
        option: &'static str,
        missing: &'static str,
    },
    #[error("{option}= is empty")]
    Empty { option: &'static str },
    #[error("{option}= has more than {MAX_RANGES} ranges")]
    TooMany { option: &'static str },
    #[error("{option}={range:?}: expected container-id:host-id:size")]
    Malformed { option: &'static str, range: String },
    #[error("{option}={range:?}: {field} {value:?} is not a decimal number below 2^32")]
    Number {
        option: &'static str,
        range: String,
        field: &'static str,
        value: String,
    },
    #[error("{option}={range:?}: size must be at least 1")]
    ZeroSize { option: &'static str, range: String },
    #[error("{option}={range:?}: the {side} ids run past 4294967294")]
    Overflow {
        option: &'static str,
        range: String,
        side: &'static str,
    },
    #[error("{option}=: {side} ids of {a:?} and {b:?} overlap")]
    Overlap {
        option: &'static str,
        side: &'static str,
        a: String,
        b: String,
    },
    #[error("uidmap=/gidmap= on a {kind} mount: only overlay and bind mounts can be idmapped")]
    UnsupportedType { kind: String },
}

const UID: &str = "uidmap";
const GID: &str = "gidmap";

impl IdMaps {
    /// Takes the `uidmap=`/`gidmap=` words out of `options`: the maps (None when there
    /// are none) and the remaining words, in order.
    pub fn take(options: &[String]) -> Result<(Option<IdMaps>, Vec<String>), IdMapError> {
        let (mut uid, mut gid) = (None, None);
        let mut rest = Vec::with_capacity(options.len());
        for o in options {
            if let Some(v) = o.strip_prefix("uidmap=") {
                set_once(&mut uid, UID, v)?;
            } else if let Some(v) = o.strip_prefix("gidmap=") {
                set_once(&mut gid, GID, v)?;
            } else {
                rest.push(o.clone());
            }
        }
        let maps = match (uid, gid) {
            (None, None) => None,
            (Some(_), None) => {
                return Err(IdMapError::Unpaired {
                    option: UID,
                    missing: GID,
                })
            }
            (None, Some(_)) => {
                return Err(IdMapError::Unpaired {
                    option: GID,
                    missing: UID,
                })
            }
            (Some(u), Some(g)) => Some(IdMaps {
                uid: parse_list(UID, u)?,
                gid: parse_list(GID, g)?,
            }),
        };
        Ok((maps, rest))
    }
}

fn set_once<'a>(
    slot: &mut Option<&'a str>,
    option: &'static str,
    value: &'a str,
) -> Result<(), IdMapError> {
    if slot.replace(value).is_some() {
        return Err(IdMapError::Duplicate { option });
    }
    Ok(())
}

/// Parses one option value into ranges the kernel will accept.
pub fn parse_list(option: &'static str, value: &str) -> Result<Vec<Range>, IdMapError> {
    if value.is_empty() {
        return Err(IdMapError::Empty { option });
    }
    let mut ranges = Vec::new();
    for text in value.split(',') {
        if ranges.len() == MAX_RANGES {
            return Err(IdMapError::TooMany { option });
        }
        ranges.push(parse_range(option, text)?);
    }
    for side in ["container", "host"] {
        let first = |r: &Range| if side == "host" { r.host } else { r.container };
        let mut sorted = ranges.clone();
        sorted.sort_by_key(first);
        for pair in sorted.windows(2) {
            if u64::from(first(&pair[0])) + u64::from(pair[0].size) > u64::from(first(&pair[1])) {
                return Err(IdMapError::Overlap {
                    option,
                    side,
                    a: show(&pair[0]),
                    b: show(&pair[1]),
                });
            }
        }
    }
    Ok(ranges)
}

fn parse_range(option: &'static str, text: &str) -> Result<Range, IdMapError> {
    let range = echo(text);
    let fields: Vec<&str> = text.splitn(4, ':').collect();
    let [container, host, size] = fields[..] else {
        return Err(IdMapError::Malformed { option, range });
    };
    let number = |field: &'static str, s: &str| -> Result<u32, IdMapError> {
        // u32::from_str would take a leading '+'; containerd writes plain digits.
        let digits = !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        digits
            .then(|| s.parse::<u32>().ok())
            .flatten()
            .ok_or_else(|| IdMapError::Number {
                option,
                range: range.clone(),
                field,
                value: echo(s),
            })
    };
    let r = Range {
        container: number("container id", container)?,
        host: number("host id", host)?,
        size: number("size", size)?,
    };
    if r.size == 0 {
        return Err(IdMapError::ZeroSize { option, range });
    }
    // (uid_t)-1 is never a valid id, so the last id of a range is at most 2^32 - 2.
    for (side, first) in [("container", r.container), ("host", r.host)] {
        if u64::from(first) + u64::from(r.size) > u64::from(u32::MAX) {
            return Err(IdMapError::Overflow {
                option,
                range,
                side,
            });
        }
    }
    Ok(r)
}

fn show(r: &Range) -> String {
    format!("{}:{}:{}", r.container, r.host, r.size)
}

/// At most [`ECHO_LIMIT`] characters of `s`, marked when cut.
fn echo(s: &str) -> String {
    match s.char_indices().nth(ECHO_LIMIT) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

/// The text written to `/proc/PID/uid_map` (or `gid_map`): one `container host size`
/// line per range, in one write.
pub fn proc_map(ranges: &[Range]) -> String {
    let mut out = String::with_capacity(ranges.len() * 24);
    for r in ranges {
        let _ = writeln!(out, "{} {} {}", r.container, r.host, r.size);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn containerds_words_are_taken_out_in_order() {
        let (maps, rest) = IdMaps::take(&words(&[
            "index=off",
            "uidmap=0:100000:65536",
            "gidmap=0:200000:1,1:300000:65535",
            "lowerdir=/a",
        ]))
        .unwrap();
        let maps = maps.unwrap();
        assert_eq!(
            maps.uid,
            vec![Range {
                container: 0,
                host: 100000,
                size: 65536
            }]
        );
        assert_eq!(maps.gid.len(), 2);
        assert_eq!(rest, words(&["index=off", "lowerdir=/a"]));
        assert_eq!(
            proc_map(&maps.gid),
            "0 200000 1\n1 300000 65535\n".to_string()
        );
        let (none, rest) = IdMaps::take(&words(&["ro", "rbind"])).unwrap();
        assert_eq!(none, None);
        assert_eq!(rest, words(&["ro", "rbind"]));
    }

    #[test]
    fn bad_options_are_named() {
        let take = |v: &[&str]| IdMaps::take(&words(v)).unwrap_err();
        assert_eq!(
            take(&["uidmap=0:1:1"]),
            IdMapError::Unpaired {
                option: "uidmap",
                missing: "gidmap"
            }
        );
        assert!(matches!(
            take(&["uidmap=0:1:1", "gidmap=0:1:1", "uidmap=0:1:1"]),
            IdMapError::Duplicate { option: "uidmap" }
        ));
        let parse = |v: &str| parse_list("uidmap", v).unwrap_err();
        assert!(matches!(parse(""), IdMapError::Empty { .. }));
        for malformed in ["0:1", "0:1:2:3", "0:1:2,", ","] {
            assert!(
                matches!(parse(malformed), IdMapError::Malformed { .. }),
                "{malformed}"
            );
        }
        for bad in [
            "a:1:1",
            "0:-1:1",
            "0:1:+1",
            "0: 1:1",
            "0:4294967296:1",
            "0:1:0x1",
        ] {
            assert!(matches!(parse(bad), IdMapError::Number { .. }), "{bad}");
        }
        assert!(matches!(parse("0:1:0"), IdMapError::ZeroSize { .. }));
        let e = parse("4294967294:0:2");
        assert!(
            matches!(
                e,
                IdMapError::Overflow {
                    side: "container",
                    ..
                }
            ),
            "{e}"
        );
        assert!(matches!(
            parse("0:4294967295:1"),
            IdMapError::Overflow { side: "host", .. }
        ));
        // The last valid id is 2^32 - 2.
        assert!(parse_list("uidmap", "0:4294967294:1").is_ok());
        assert!(matches!(
            parse("0:100:10,5:500:1"),
            IdMapError::Overlap {
                side: "container",
                ..
            }
        ));
        assert!(matches!(
            parse("0:100:10,10:105:1"),
            IdMapError::Overlap { side: "host", .. }
        ));
        assert!(parse_list("uidmap", "0:100:10,10:110:1").is_ok());
        let e = parse(&format!("0:{}:1", "9".repeat(200)));
        assert!(e.to_string().len() < 200, "the error echoes too much: {e}");
    }

    #[test]
    fn the_number_of_ranges_is_bounded() {
        let ranges = |n: u32| {
            (0..n)
                .map(|i| format!("{i}:{}:1", 100000 + i))
                .collect::<Vec<_>>()
                .join(",")
        };
        assert_eq!(parse_list("gidmap", &ranges(340)).unwrap().len(), 340);
        assert_eq!(
            parse_list("gidmap", &ranges(341)).unwrap_err(),
            IdMapError::TooMany { option: "gidmap" }
        );
    }
}
