//! Terminals and interactive stdin (issue 9), for the Go shim and sturdy alike: execs with
//! a pty from runc's console socket, ResizePty, CloseIO on pipes and terminals, and
//! interactive exec and attach through CRI streaming, driven by `crictl` under a pty the
//! test owns (crictl speaks the stream server's SPDY protocol, stdin half-close and resize
//! messages included). ExecSync's pipe path is checked under a big load alongside.

mod tty_support;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use sturdy_integration::k8s_cri::v1::{ContainerConfig, ContainerState};
use sturdy_integration::tools::{self, CRI_TOOLS};
use sturdy_integration::{container_config, parity_tests, Containerd, Cri, Handler, CRI_NAMESPACE};
use tokio::io::AsyncWriteExt;
use tonic::Code;
use tty_support::*;

/// Runs crictl with `args`, feeds `input` on a pipe and closes it; returns its stdout
/// once it ends successfully (`stuck` if it does not end within T).
async fn crictl_piped(
    crictl: &Path,
    endpoint: &str,
    args: &[&str],
    input: &[u8],
    stuck: &str,
) -> Vec<u8> {
    let mut child = tokio::process::Command::new(crictl)
        .args(crictl_args(endpoint, args))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn crictl");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input).await.expect("write");
    drop(stdin);
    let out = tokio::time::timeout(T, child.wait_with_output())
        .await
        .expect(stuck)
        .expect("crictl");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "crictl: {:?}: {stderr}", out.status);
    out.stdout
}

/// `crictl` from ../shared/tools, or None (a visible skip, `test_skip`; the caller returns).
fn crictl() -> Option<PathBuf> {
    match tools::tool(CRI_TOOLS, "crictl") {
        Ok(p) => Some(p),
        Err(e) if e.is_missing() => {
            test_skip::skip(format!("no crictl here: {e}"));
            None
        }
        Err(e) => panic!("crictl: {e}"),
    }
}

/// crictl's arguments for this fixture, followed by `args`.
fn crictl_args<'a>(endpoint: &'a str, args: &[&'a str]) -> Vec<&'a str> {
    let mut all = vec!["--runtime-endpoint", endpoint, "--image-endpoint", endpoint];
    all.extend_from_slice(args);
    all
}

/// A running pod with one running container made from `config`.
async fn pod_with(
    fx: &Containerd,
    h: Handler,
    name: &str,
    config: ContainerConfig,
) -> (Cri, String) {
    let mut cri = fx.cri().await.expect("cri client");
    let pod_config = fx.pod_config(name);
    let pod = cri.run_pod(h, &pod_config).await.expect("RunPodSandbox");
    let ctr = cri
        .create_container(&pod, config, &pod_config)
        .await
        .expect("CreateContainer");
    cri.start_container(&ctr).await.expect("StartContainer");
    (cri, ctr)
}

parity_tests! {
    /// CloseIO on a piped stdin: cat reads everything sent, then EOF, and ends.
    async fn close_io_ends_piped_stdin(h: Handler) {
        let fx = Containerd::start().await.expect("start containerd");
        fx.ctr_run_detached(h, "box", &["/bin/sleep", "600"]).await.expect("ctr run -d");
        let mut e = TaskExec::start(&fx, fx.namespace(), "box", "cat", &["cat"], false).await;
        e.write(b"hello\n");
        e.write(b"no newline at the end");
        e.close_stdin().await;
        let status = e.wait(T).await.expect("cat never saw EOF");
        assert_eq!(status, 0);
        let out = e.stdout.out.clone();
        assert!(
            wait_for(T, || out.text() == "hello\nno newline at the end").await,
            "stdout {:?}",
            out.text()
        );
        e.delete().await;
    }

    /// With a terminal the process reads what is typed (the terminal echoes it into the one
    /// output stream), and CloseIO ends its input: cat ends.
    async fn close_io_ends_terminal_stdin(h: Handler) {
        let fx = Containerd::start().await.expect("start containerd");
        fx.ctr_run_detached(h, "box", &["/bin/sleep", "600"]).await.expect("ctr run -d");
        let mut e = TaskExec::start(&fx, fx.namespace(), "box", "cat", &["cat"], true).await;
        assert!(e.stderr.is_none());
        e.write(b"hello\n");
        let out = e.stdout.out.clone();
        // Once from the terminal's echo, once from cat.
        assert!(
            wait_for(T, || out.count("hello\r\n") >= 2).await,
            "stdout {:?}",
            out.text()
        );
        e.close_stdin().await;
        let status = e.wait(T).await.expect("cat still runs after CloseIO");
        eprintln!("{h}: cat ended with status {status} after CloseIO on its terminal");
        match h {
            // The terminal's EOF character: cat reads end of file.
            Handler::Sturdy => assert_eq!(status, 0),
            // The Go shim closes the master when stdin ends: a hangup, SIGHUP.
            Handler::Runc => assert_eq!(status, 129),
        }
        assert_eq!(out.count("hello"), 2, "stdout {:?}", out.text());
        e.delete().await;
    }

    /// ResizePty reaches an exec's terminal: `stty size` prints each new size. An unknown
    /// exec is NotFound.
    async fn resize_reaches_an_exec_terminal(h: Handler) {
        let fx = Containerd::start().await.expect("start containerd");
        fx.ctr_run_detached(h, "box", &["/bin/sleep", "600"]).await.expect("ctr run -d");
        let script = "while read x; do stty size; done";
        let mut e = TaskExec::start(&fx, fx.namespace(), "box", "sz", &["sh", "-c", script], true).await;
        let out = e.stdout.out.clone();
        for (width, height) in [(132, 50), (100, 30)] {
            e.resize(width, height).await.expect("ResizePty");
            e.write(b"\n");
            let want = format!("{height} {width}\r\n");
            assert!(wait_for(T, || out.text().contains(&want)).await, "no {want:?} in {:?}", out.text());
        }
        let ns = fx.namespace().to_string();
        let err = resize(&mut e.tasks, &ns, "box", "nope", 80, 24).await.expect_err("resize of no exec");
        assert_eq!(err.code(), Code::NotFound, "{err}");
        e.close_stdin().await;
        e.wait(T).await.expect("sh still runs after CloseIO");
        e.delete().await;
    }

    /// ResizePty on a process without a terminal: sturdy refuses it (FailedPrecondition);
    /// the Go shim ignores it.
    async fn resize_without_a_terminal(h: Handler) {
        let fx = Containerd::start().await.expect("start containerd");
        fx.ctr_run_detached(h, "box", &["/bin/sleep", "600"]).await.expect("ctr run -d");
        let mut e = TaskExec::start(&fx, fx.namespace(), "box", "cat", &["cat"], false).await;
        let r = e.resize(80, 24).await;
        match h {
            Handler::Sturdy => assert_eq!(r.expect_err("resize of a pipe").code(), Code::FailedPrecondition),
            Handler::Runc => r.expect("the Go shim ignores it"),
        }
        e.close_stdin().await;
        assert_eq!(e.wait(T).await, Some(0));
        e.delete().await;
    }

    /// Output a terminal process writes just before it exits all arrives.
    async fn terminal_output_is_drained_at_exit(h: Handler) {
        const N: usize = 300_000;
        let fx = Containerd::start().await.expect("start containerd");
        fx.ctr_run_detached(h, "box", &["/bin/sleep", "600"]).await.expect("ctr run -d");
        let script = format!("head -c {N} /dev/zero | tr '\\0' x; echo; echo END");
        let mut e = TaskExec::start(&fx, fx.namespace(), "box", "out", &["sh", "-c", &script], true).await;
        assert_eq!(e.wait(T).await, Some(0));
        let out = e.stdout.out.clone();
        assert!(wait_for(Duration::from_secs(10), || out.text().contains("END\r\n")).await, "{} bytes", out.text().len());
        assert_eq!(out.count("x"), N);
        e.delete().await;
    }

    /// ExecSync, the pipe path: 1 MiB on stdout and on stderr, and the exit code.
    async fn exec_sync_big_output_and_exit_code(h: Handler) {
        const MIB: usize = 1 << 20;
        let fx = Containerd::start().await.expect("start containerd");
        let (mut cri, ctr) = pod_with(&fx, h, "execsync", container_config("main", &["/bin/sleep", "600"])).await;
        let script = format!(
            "head -c {MIB} /dev/zero | tr '\\0' o; head -c {MIB} /dev/zero | tr '\\0' e >&2; exit 3"
        );
        let out = cri.exec_sync(&ctr, &["sh", "-c", &script], Duration::from_secs(60)).await.expect("ExecSync");
        assert_eq!(out.exit_code, 3);
        assert_eq!(out.stdout.len(), MIB);
        assert!(out.stdout.bytes().all(|b| b == b'o'));
        assert_eq!(out.stderr.len(), MIB);
        assert!(out.stderr.bytes().all(|b| b == b'e'));
    }

    /// `crictl exec -i` with piped stdin: its end reaches cat through CRI's CloseIO.
    async fn cri_exec_piped_stdin_ends(h: Handler) {
        let Some(crictl) = crictl() else { return };
        let fx = Containerd::start().await.expect("start containerd");
        let (_cri, ctr) = pod_with(&fx, h, "execi", container_config("main", &["/bin/sleep", "600"])).await;
        let endpoint = format!("unix://{}", fx.socket().display());
        let out = crictl_piped(&crictl, &endpoint, &["exec", "-i", &ctr, "cat"], b"hello\nworld\n", "cat never saw EOF").await;
        assert_eq!(String::from_utf8_lossy(&out), "hello\nworld\n");
    }

    /// `crictl exec -it` under a terminal: the exec's terminal follows ours (crictl sends
    /// its size, then a resize message at SIGWINCH), and ^D typed ends the shell.
    async fn cri_exec_terminal_follows_resize(h: Handler) {
        let Some(crictl) = crictl() else { return };
        let fx = Containerd::start().await.expect("start containerd");
        let (_cri, ctr) = pod_with(&fx, h, "exectty", container_config("main", &["/bin/sleep", "600"])).await;
        let endpoint = format!("unix://{}", fx.socket().display());
        let script = "while read x; do stty size; done";
        let args = crictl_args(&endpoint, &["exec", "-it", &ctr, "sh", "-c", script]);
        let mut term = PtyClient::spawn(&crictl, &args, 24, 80);
        for (rows, cols) in [(24u16, 80u16), (50, 132)] {
            if (rows, cols) != (24, 80) {
                term.resize(rows, cols);
            }
            // Typed until the answer shows: the size travels apart from the keystrokes.
            let want = format!("{rows} {cols}\r\n");
            let shown = term.shown.clone();
            let mut seen = false;
            for _ in 0..300 {
                term.type_in(b"\r");
                if wait_for(Duration::from_millis(200), || shown.text().contains(&want)).await {
                    seen = true;
                    break;
                }
            }
            assert!(seen, "no {want:?} in {:?}", shown.text());
        }
        term.type_in(b"\x04");
        let status = term.wait(T).await;
        assert_eq!(status, Some(0), "crictl: {:?}", term.shown.text());
    }

    /// Attach without a terminal to a container whose stdin is open once (`stdin_once`):
    /// what is sent reaches its cat and comes back through the attach stream, and the end
    /// of the attach's stdin closes the container's (CRI's CloseIO on init): cat sees EOF
    /// and the container exits 0.
    async fn cri_attach_piped_stdin_ends(h: Handler) {
        let Some(crictl) = crictl() else { return };
        let fx = Containerd::start().await.expect("start containerd");
        let mut config = container_config("cat", &["/bin/cat"]);
        config.stdin = true;
        config.stdin_once = true;
        let (mut cri, ctr) = pod_with(&fx, h, "attachi", config).await;
        let endpoint = format!("unix://{}", fx.socket().display());
        let out = crictl_piped(&crictl, &endpoint, &["attach", "-i", &ctr], b"hello\nattached\n", "the attach never ended: cat never saw EOF").await;
        assert_eq!(String::from_utf8_lossy(&out), "hello\nattached\n");
        let end = std::time::Instant::now() + T;
        let status = loop {
            let s = cri.container_status(&ctr).await.expect("ContainerStatus");
            if s.state == ContainerState::ContainerExited as i32 {
                break s;
            }
            assert!(std::time::Instant::now() < end, "cat still runs: {s:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(status.exit_code, 0, "{status:?}");
    }

    /// Attach to a container started with a terminal and stdin: typed commands run in it,
    /// and its terminal follows resizes from crictl and from ResizePty on init.
    async fn cri_attach_terminal(h: Handler) {
        let Some(crictl) = crictl() else { return };
        let fx = Containerd::start().await.expect("start containerd");
        let mut config = container_config("shell", &["/bin/sh"]);
        config.tty = true;
        config.stdin = true;
        let (_cri, ctr) = pod_with(&fx, h, "attach", config).await;
        let endpoint = format!("unix://{}", fx.socket().display());
        let args = crictl_args(&endpoint, &["attach", "-it", &ctr]);
        let mut term = PtyClient::spawn(&crictl, &args, 24, 80);
        let shown = term.shown.clone();
        let mut seen = false;
        for _ in 0..100 {
            term.type_in(b"echo hi-$((6*7))\r");
            if wait_for(Duration::from_millis(300), || shown.text().contains("hi-42\r\n")).await {
                seen = true;
                break;
            }
        }
        assert!(seen, "the attached shell never answered: {:?}", shown.text());

        term.resize(50, 132);
        let mut seen = false;
        for _ in 0..100 {
            term.type_in(b"stty size\r");
            if wait_for(Duration::from_millis(300), || shown.text().contains("50 132\r\n")).await {
                seen = true;
                break;
            }
        }
        assert!(seen, "resize never reached init: {:?}", shown.text());

        let mut tasks = fx.client().await.expect("client").tasks();
        resize(&mut tasks, CRI_NAMESPACE, &ctr, "", 100, 30).await.expect("ResizePty on init");
        term.type_in(b"stty size\r");
        assert!(wait_for(T, || shown.text().contains("30 100\r\n")).await, "{:?}", shown.text());
        // crictl is ended by the PtyClient's drop; the fixture removes the pod.
    }
}

/// The request's `terminal`, not the process spec's, decides whether an exec gets a pty:
/// runc's pty must match the stdio the shim serves. (The Go shim follows the spec and
/// then waits forever for a master that never comes, or fails to start the exec.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_terminal_follows_the_request_not_the_spec() {
    let h = Handler::Sturdy;
    let fx = Containerd::start().await.expect("start containerd");
    fx.ctr_run_detached(h, "box", &["/bin/sleep", "600"])
        .await
        .expect("ctr run -d");
    for (exec_id, terminal) in [("tty", true), ("pipes", false)] {
        let mut e = TaskExec::start_with_spec_terminal(
            &fx,
            fx.namespace(),
            "box",
            exec_id,
            &["tty"],
            terminal,
            !terminal,
        )
        .await;
        let status = e.wait(T).await.expect("tty never ended");
        let out = e.stdout.out.clone();
        let want = if terminal { "/dev/pts/" } else { "not a tty" };
        assert!(
            wait_for(T, || out.text().contains(want)).await,
            "{exec_id}: {:?}",
            out.text()
        );
        assert_eq!(status, if terminal { 0 } else { 1 });
        e.delete().await;
    }
}
