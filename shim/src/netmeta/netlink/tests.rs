//! Parsing of rtnetlink replies, and a real dump of this namespace.

use super::*;

fn attr(kind: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
    v.extend_from_slice(&kind.to_ne_bytes());
    v.extend_from_slice(payload);
    while v.len() % 4 != 0 {
        v.push(0);
    }
    v
}

#[test]
fn parses_a_link() {
    let mut body = vec![0u8; 16];
    body[4..8].copy_from_slice(&3u32.to_ne_bytes());
    body[8..12].copy_from_slice(&(libc::IFF_UP as u32).to_ne_bytes());
    body.extend(attr(IFLA_IFNAME, b"eth0\0"));
    body.extend(attr(IFLA_MTU, &1450u32.to_ne_bytes()));
    body.extend(attr(IFLA_ADDRESS, &[0x0a, 0x58, 0xc6, 0x12, 0, 0x32]));
    let i = link(&body).unwrap();
    assert_eq!(
        (i.index, i.name.as_str(), i.mtu, i.up, i.mac.as_str()),
        (3, "eth0", 1450, true, "0a:58:c6:12:00:32")
    );
}

#[test]
fn parses_addresses_preferring_local() {
    let mut body = vec![libc::AF_INET as u8, 28, 0, 0];
    body.extend_from_slice(&3u32.to_ne_bytes());
    body.extend(attr(IFA_ADDRESS, &[10, 0, 0, 1]));
    body.extend(attr(IFA_LOCAL, &[198, 18, 0, 50]));
    let (index, a) = address(&body).unwrap();
    assert_eq!(
        (index, a.ip.as_str(), a.prefix, a.scope.as_str()),
        (3, "198.18.0.50", 28, "global")
    );
    let mut v6 = vec![libc::AF_INET6 as u8, 64, 0, 253];
    v6.extend_from_slice(&3u32.to_ne_bytes());
    let mut ip = [0u8; 16];
    ip[0] = 0xfe;
    ip[1] = 0x80;
    ip[15] = 1;
    v6.extend(attr(IFA_ADDRESS, &ip));
    let (_, a) = address(&v6).unwrap();
    assert_eq!((a.ip.as_str(), a.scope.as_str()), ("fe80::1", "link"));
    assert!(address(&[0u8; 4]).is_err());
}

#[test]
fn parses_routes_and_skips_the_local_table() {
    let ifs = vec![Interface {
        index: 3,
        name: "eth0".into(),
        mac: String::new(),
        mtu: 1500,
        up: true,
        addresses: vec![],
    }];
    let mut body = vec![
        libc::AF_INET as u8,
        0,
        0,
        0,
        254,
        3,
        0,
        RTN_UNICAST,
        0,
        0,
        0,
        0,
    ];
    body.extend(attr(RTA_GATEWAY, &[198, 18, 0, 49]));
    body.extend(attr(RTA_OIF, &3u32.to_ne_bytes()));
    let r = route(&body, &ifs).unwrap().unwrap();
    assert_eq!(r.destination, "0.0.0.0/0");
    assert_eq!(r.gateway.as_deref(), Some("198.18.0.49"));
    assert_eq!(r.interface.as_deref(), Some("eth0"));
    assert_eq!((r.table, r.scope.as_str()), (254, "global"));
    let mut local = body.clone();
    local[4] = 255;
    assert!(route(&local, &ifs).unwrap().is_none());
    let mut broadcast = body;
    broadcast[7] = 3;
    assert!(route(&broadcast, &ifs).unwrap().is_none());
}

#[test]
fn dumps_this_namespace() {
    let Dump {
        interfaces: ifs,
        truncated,
        ..
    } = dump().unwrap();
    assert!(truncated.is_empty(), "{truncated:?}");
    let lo = ifs
        .iter()
        .find(|i| i.name == "lo")
        .expect("lo is always there");
    assert_eq!(lo.index, 1);
    assert!(lo
        .addresses
        .iter()
        .any(|a| a.ip == "127.0.0.1" && a.prefix == 8));
}
