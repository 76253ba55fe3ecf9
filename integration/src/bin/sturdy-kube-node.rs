//! Holds a single-node Kubernetes cluster ([`sturdy_integration::kube::KubeNode`]) until it
//! is told to stop: what `scripts/kube-node.sh up` starts in the background and `down` ends.
//!
//! `sturdy-kube-node serve --dir DIR --ready FILE [--generation G]` brings the node up in
//! DIR, writes `KUBECTL=<wrapper>` to FILE, and on SIGTERM or SIGINT tears everything down
//! (exit 0 if nothing was left behind).

use std::path::PathBuf;
use std::process::ExitCode;

use sturdy_integration::kube::KubeNode;
use sturdy_integration::Generation;

fn usage() -> ExitCode {
    eprintln!("usage: sturdy-kube-node serve --dir DIR --ready FILE [--generation G]");
    ExitCode::from(2)
}

// One thread: the node's components die with the thread that started them (their parent
// death signal), and this one lives until the node is torn down.
#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) != Some("serve") {
        return usage();
    }
    let (mut dir, mut ready, mut generation) = (None, None, None);
    let mut it = args[1..].iter();
    while let Some(a) = it.next() {
        let value = it.next();
        match (a.as_str(), value) {
            ("--dir", Some(v)) => dir = Some(PathBuf::from(v)),
            ("--ready", Some(v)) => ready = Some(PathBuf::from(v)),
            ("--generation", Some(v)) => match Generation::parse(v) {
                Some(g) => generation = Some(g),
                None => {
                    eprintln!("unknown containerd generation {v}");
                    return usage();
                }
            },
            _ => return usage(),
        }
    }
    let (Some(dir), Some(ready)) = (dir, ready) else {
        return usage();
    };
    let mut builder = KubeNode::builder().dir(&dir);
    if let Some(g) = generation {
        builder = builder.generation(g);
    }
    let mut node = match builder.start().await {
        Ok(node) => node,
        Err(e) => {
            eprintln!("sturdy-kube-node: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "node {} up in {:.1}s on containerd {} (dir {})",
        sturdy_integration::kube::NODE_NAME,
        node.startup_time().as_secs_f64(),
        node.containerd().generation().name(),
        dir.display()
    );
    let line = format!("KUBECTL={}\n", node.kubectl().path().display());
    if let Err(e) = std::fs::write(&ready, line) {
        eprintln!("sturdy-kube-node: writing {}: {e}", ready.display());
        return ExitCode::FAILURE;
    }
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("sturdy-kube-node: SIGTERM handler: {e}");
            return ExitCode::FAILURE;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    println!("stopping the node");
    let problems = node.stop();
    if problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        eprintln!("sturdy-kube-node: left behind: {problems:?}");
        ExitCode::FAILURE
    }
}
