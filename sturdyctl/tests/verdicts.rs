//! A watched process that exits is a dead shim only if the shim's socket stopped answering
//! with it. No containerd here: its socket does not exist.

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use containerd_shim_protos::protobuf::Message;
use containerd_shim_protos::ttrpc::Response;
use sturdyctl::journal::{Journal, Phase, DEFAULT_MAX_BYTES};
use sturdyctl::watchdog;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod common;
use common::{config, shim_bundle, trusted_tempdir, until};

/// A ttrpc server that answers every request (with an empty reply) and counts them.
fn answering_socket(path: &std::path::Path) -> Arc<AtomicUsize> {
    let requests = Arc::new(AtomicUsize::new(0));
    let listener = tokio::net::UnixListener::bind(path).unwrap();
    let count = requests.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                let mut header = [0u8; 10];
                while conn.read_exact(&mut header).await.is_ok() {
                    let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
                    let mut body = vec![0u8; len as usize];
                    if conn.read_exact(&mut body).await.is_err() {
                        return;
                    }
                    count.fetch_add(1, Ordering::SeqCst);
                    let reply = Response::default().write_to_bytes().unwrap();
                    let mut out = (reply.len() as u32).to_be_bytes().to_vec();
                    out.extend_from_slice(&header[4..8]);
                    out.extend_from_slice(&[2, 0]);
                    out.extend_from_slice(&reply);
                    if conn.write_all(&out).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    requests
}

/// The bundle's `shim.pid` names a process that looks like the shim but is not the one
/// serving its socket (as a Go shim's child between fork and exec once was taken for the
/// shim). When it exits, the socket still answers: no recovery starts, the pod is left
/// alone, and the shim is looked for again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exit_while_the_socket_answers_is_no_death() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let socket = dir.path().join("shim.sock");
    let requests = answering_socket(&socket);

    // Looks like a sturdy shim daemon of this containerd; exits when its stdin closes.
    // In a directory only root can change: a process is taken for a shim only if it runs
    // as root from a binary no one else could have changed.
    let bin_dir = trusted_tempdir();
    let bin = bin_dir.path().join("containerd-shim-sturdy-v2");
    std::fs::copy("/bin/sh", &bin).unwrap();
    let address = cfg.address.to_str().unwrap().to_string();
    let mut lookalike = Command::new(&bin)
        .args(["-c", "read x", "sh"])
        .args(["-namespace", "default", "-id", "c1", "-address", &address])
        .stdin(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap();
    // runc still has the container: a recovery would act on it.
    shim_bundle(dir.path(), &cfg, &socket, lookalike.id(), &bin);

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(watchdog::run(cfg.clone(), async {
        let _ = stopped.await;
    }));
    // Watched: its first probe arrived.
    assert!(
        until(Duration::from_secs(10), || requests.load(Ordering::SeqCst)
            >= 1)
        .await,
        "the lookalike was never probed within 10s"
    );
    let before = requests.load(Ordering::SeqCst);
    drop(lookalike.stdin.take());
    let _ = lookalike.wait();
    // The verdict's recheck, then the next scans' look at a bundle whose process is gone
    // but whose socket answers. A recovery would have taken the shim out of the scans.
    assert!(
        until(Duration::from_secs(10), || requests.load(Ordering::SeqCst)
            >= before + 3)
        .await,
        "no recheck and no later scan reached the socket within 10s"
    );
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("the watchdog did not stop")
        .unwrap()
        .unwrap();
    let entries = Journal::new(&cfg.journal, DEFAULT_MAX_BYTES)
        .read()
        .unwrap_or_default();
    assert!(
        !entries
            .iter()
            .any(|e| matches!(e.phase, Phase::Started { .. })),
        "a recovery started although the socket answered: {entries:#?}"
    );
}
