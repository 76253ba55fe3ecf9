//! A record as version 1 of the format writes it must stay readable by every later build:
//! a shim replaced by a newer one, or sturdyctl, reads the records older shims left.

use std::path::Path;

use sandbox_record::model::POD_INTERFACE;
use sandbox_record::{format, Network};

const V1: &[u8] = include_bytes!("../testdata/record-v1.json");

#[test]
fn a_version_1_record_still_reads() {
    let r = format::decode(Path::new("record-v1.json"), V1).expect("version 1 record");
    assert_eq!(r.namespace, "k8s.io");
    assert_eq!(r.pod.name, "web-0");
    assert_eq!(r.pod.namespace, "shop");
    assert_eq!(r.containerd, "/run/containerd/containerd.sock.ttrpc");
    let Network::Namespace {
        interfaces, routes, ..
    } = &r.network
    else {
        panic!("a pod network was recorded: {:?}", r.network);
    };
    let eth0 = interfaces
        .iter()
        .find(|i| i.name == POD_INTERFACE)
        .expect("eth0");
    assert_eq!(eth0.mac, "0a:58:c6:12:00:07");
    assert_eq!(
        r.pod_ips(),
        vec!["198.18.0.7".to_string(), "fd00:198:18::7".to_string()]
    );
    assert_eq!(routes[0].gateway.as_deref(), Some("198.18.0.1"));
    // Today's writer still produces these exact bytes: a change to the format shows here
    // and must come with a new version that keeps reading this one.
    assert_eq!(format::encode(&r).unwrap(), V1);
}

#[test]
fn a_flipped_byte_in_the_version_1_record_is_caught() {
    let mut bad = V1.to_vec();
    let at = bad.len() / 2;
    bad[at] ^= 0x01;
    assert!(format::decode(Path::new("record-v1.json"), &bad).is_err());
}
