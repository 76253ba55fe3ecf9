//! What a failed Create undoes in runc: its own container, never another one's.

use super::*;
use containerd_shim_protos::ttrpc::Code;

/// systemd refusing the scope of our own half-made container says "already exists" too;
/// only runc's own message about a taken id means the container is someone else's.
#[tokio::test]
async fn a_failed_create_deletes_its_container_unless_runc_says_the_id_is_taken() {
    let rig = Rig::new();
    let systemd = "runc create failed: unable to start container process: unable to apply \
                   cgroup configuration: Unit cri-containerd-s.scope already exists.";
    let err = rig
        .create("s", &[("create-fail", systemd)])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("scope already exists"), "{err}");
    assert_eq!(rig.count("delete s"), 1, "our container was left in runc");

    // runc already has a container "f" that this shim never made.
    std::fs::create_dir_all(rig.root().join("test").join("f")).unwrap();
    let err = rig.create("f", &[]).await.unwrap_err();
    assert!(
        matches!(&err, Error::Runc { source, .. } if source.is_already_exists()),
        "{err}"
    );
    assert_eq!(err.code(), Code::ALREADY_EXISTS);
    assert_eq!(rig.count("delete f"), 0, "another's container was deleted");
    assert!(rig.tasks.is_empty());
}
