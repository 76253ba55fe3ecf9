//! `sturdy-demo`: start a private containerd, run a busybox container through the sturdy shim
//! (or the Go runc shim), print its output, and tear everything down again.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use sturdy_integration::containerd::SHIM_BINARY;
use sturdy_integration::ctr::shim_looks_real;
use sturdy_integration::k8s_cri::v1::{ContainerState, PodSandboxState};
use sturdy_integration::watchdog::Watchdog;
use sturdy_integration::{container_config, Containerd, Handler};
use sturdy_integration::{until, until_some};

const USAGE: &str = "usage: sturdy-demo [--runtime sturdy|runc] [--shim PATH]

Starts a private containerd under a temp dir (nothing system-wide is used), imports a locally
built busybox image, runs a container through the chosen shim via ctr and via CRI, prints what
it printed, then stops everything it started.

  --runtime  sturdy (default; fails if the shim is missing or a stub) or runc (the Go shim)
  --shim     the containerd-shim-sturdy-v2 binary (default: next to this program, else
             $STURDY_SHIM_BIN, else target/debug)";

struct Args {
    runtime: Handler,
    shim: PathBuf,
}

fn parse_args() -> Result<Args, String> {
    let mut runtime = Handler::Sturdy;
    let mut shim = None;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--runtime" => {
                let v = it.next().ok_or("--runtime needs a value")?;
                runtime = Handler::from_name(&v).ok_or(format!("unknown runtime {v:?}"))?;
            }
            "--shim" => shim = Some(PathBuf::from(it.next().ok_or("--shim needs a value")?)),
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let shim = shim.unwrap_or_else(|| {
        // demo.sh builds both in release mode, so the matching shim sits next to us.
        let sibling = std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(|d| d.join(SHIM_BINARY)));
        match sibling {
            Some(p) if p.exists() && std::env::var_os("STURDY_SHIM_BIN").is_none() => p,
            _ => sturdy_integration::containerd::default_shim_bin(),
        }
    });
    Ok(Args { runtime, shim })
}

/// The handler the demo runs, or why it cannot run the requested one. A sturdy demo
/// without a working sturdy shim is an error, never a quiet run of the Go shim.
fn choose(args: &Args) -> Result<Handler, String> {
    if args.runtime == Handler::Runc {
        println!("==> runtime: runc (io.containerd.runc.v2, the Go shim), as requested");
        return Ok(Handler::Runc);
    }
    const HOW: &str = "build it (scripts/build-shim.sh) or pass --shim PATH; \
                       --runtime runc runs the demo through the Go shim instead";
    if !args.shim.exists() {
        return Err(format!(
            "no sturdy shim binary at {}: {HOW}",
            args.shim.display()
        ));
    }
    if !shim_looks_real(&args.shim) {
        return Err(format!(
            "{} is no working sturdy shim (it does not answer `-v`): {HOW}",
            args.shim.display()
        ));
    }
    println!(
        "==> runtime: sturdy (io.containerd.sturdy.v2) using {}",
        args.shim.display()
    );
    Ok(Handler::Sturdy)
}

async fn demo(fx: &Containerd, h: Handler) -> Result<(), String> {
    let script = "echo \"hello from a container run by $RUNTIME_NAME\"; \
                  echo \"hostname: $(hostname)  user: $(id -un)  pid: $$\"; \
                  echo 'processes:'; ps -o pid,comm; true";
    println!(
        "\n==> ctr run --rm --runtime {} {} demo sh -c …",
        h.runtime_type(),
        sturdy_integration::BUSYBOX_IMAGE
    );
    let opts = sturdy_integration::RunOptions {
        extra_flags: vec!["--env".into(), format!("RUNTIME_NAME={}", h.runtime_type())],
        ..Default::default()
    };
    let out = fx
        .ctr_run_with(h, "demo", &["/bin/sh", "-c", script], opts)
        .await
        .map_err(|e| e.to_string())?;
    print!("{}", indent(&out.stdout));
    if out.exit_code != 0 {
        return Err(format!(
            "container exited {}: {}",
            out.exit_code, out.stderr
        ));
    }
    println!("    (exit code {})", out.exit_code);

    println!(
        "\n==> CRI: RunPodSandbox (runtime_handler \"{}\") + container + ExecSync",
        h.name()
    );
    let mut cri = fx.cri().await.map_err(|e| e.to_string())?;
    let pod_config = fx.pod_config("demo");
    let pod = cri
        .run_pod(h, &pod_config)
        .await
        .map_err(|e| e.to_string())?;
    let ip = cri.pod_ip(&pod).await.map_err(|e| e.to_string())?;
    println!("    pod {} got IP {ip}", &pod[..12.min(pod.len())]);
    match fx.shim_exe(sturdy_integration::CRI_NAMESPACE, &pod) {
        Some(exe) => println!("    pod served by shim {}", exe.display()),
        None => return Err("no shim process found for the pod".into()),
    }
    let ctr = cri
        .create_container(
            &pod,
            container_config("main", &["/bin/sleep", "3600"]),
            &pod_config,
        )
        .await
        .map_err(|e| e.to_string())?;
    cri.start_container(&ctr).await.map_err(|e| e.to_string())?;
    let out = cri
        .exec_sync(
            &ctr,
            &[
                "/bin/sh",
                "-c",
                "echo exec in pod $(hostname); ip -4 -o addr show eth0 | awk '{print $2, $4}'",
            ],
            Duration::from_secs(10),
        )
        .await
        .map_err(|e| e.to_string())?;
    print!("{}", indent(&out.stdout));
    println!("    (exit code {})", out.exit_code);
    cri.stop_pod(&pod).await.map_err(|e| e.to_string())?;
    cri.remove_pod(&pod).await.map_err(|e| e.to_string())?;
    if out.exit_code != 0 {
        return Err(format!("exec exited {}: {}", out.exit_code, out.stderr));
    }
    if h == Handler::Sturdy {
        watchdog_demo(fx).await?;
    }
    Ok(())
}

/// `sturdyctl` next to this program (demo.sh builds the workspace in release mode).
fn sturdyctl_bin() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let p = exe.parent()?.join("sturdyctl");
    p.is_file().then_some(p)
}

/// Runs `sturdyctl watchdog`, then kills one pod's shim (incident 003) and hangs another's
/// (SIGSTOP), and shows that both pods are recovered.
async fn watchdog_demo(fx: &Containerd) -> Result<(), String> {
    let Some(bin) = sturdyctl_bin() else {
        println!("\n==> sturdyctl not built next to sturdy-demo: skipping the watchdog part");
        return Ok(());
    };
    println!("\n==> sturdyctl watchdog --interval 1s (recovers dead and hung shims)");
    let watchdog = Watchdog::spawn(&bin, fx, &["--interval", "1s", "--misses", "3"], "info")
        .map_err(|e| e.to_string())?;
    let mut cri = fx.cri().await.map_err(|e| e.to_string())?;
    for (name, signal, what) in [
        ("killed", libc::SIGKILL, "kill -9 (the shim dies)"),
        ("hung", libc::SIGSTOP, "kill -STOP (the shim hangs)"),
    ] {
        let pod_config = fx.pod_config(name);
        let pod = cri
            .run_pod(Handler::Sturdy, &pod_config)
            .await
            .map_err(|e| e.to_string())?;
        let ctr = cri
            .create_container(
                &pod,
                container_config("main", &["/bin/sleep", "3600"]),
                &pod_config,
            )
            .await
            .map_err(|e| e.to_string())?;
        cri.start_container(&ctr).await.map_err(|e| e.to_string())?;
        let shim = fx
            .shim_pid(sturdy_integration::CRI_NAMESPACE, &pod)
            .ok_or("no shim pid for the pod")?;
        if !until(Duration::from_secs(15), || watchdog.watching("", shim)).await {
            return Err(format!(
                "the watchdog never picked up shim {shim}; its log:\n{}",
                watchdog.log()
            ));
        }
        let sleep_pid = container_pid(fx, &ctr).ok_or("no container pid")?;
        println!("    pod {name}: shim pid {shim}, container process {sleep_pid}; {what}");
        let t0 = Instant::now();
        // SAFETY: kill(2) of the shim this demo's containerd started, by its pid.
        unsafe { libc::kill(shim, signal) };
        if !until(Duration::from_secs(20), || !running(sleep_pid)).await {
            return Err(format!("pod {name}: its process {sleep_pid} still runs"));
        }
        println!(
            "    pod {name}: container process stopped {:.2} s after the signal",
            t0.elapsed().as_secs_f64()
        );
        // Recovered means containerd learned it: the sandbox NotReady and the container
        // Exited in CRI. containerd 2.x settles a dead shim's tasks asynchronously, so a
        // RemovePodSandbox before that is refused ("container is still running").
        let settled = until_some(Duration::from_secs(20), || {
            let (mut cri, pod, ctr) = (cri.clone(), pod.clone(), ctr.clone());
            async move {
                let pod_state = cri.pod_status(&pod).await.ok()?.state;
                let ctr_status = cri.container_status(&ctr).await.ok()?;
                (pod_state != PodSandboxState::SandboxReady as i32
                    && ctr_status.state == ContainerState::ContainerExited as i32)
                    .then_some(ctr_status.exit_code)
            }
        })
        .await;
        match settled {
            Some(code) => {
                println!("    pod {name}: CRI reports NotReady, container Exited ({code})")
            }
            None => {
                return Err(format!(
                    "pod {name}: CRI never reported it NotReady with its container Exited"
                ))
            }
        }
        cri.remove_pod(&pod).await.map_err(|e| e.to_string())?;
    }
    if !until(Duration::from_secs(20), || {
        watchdog.finished_incidents() >= 2
    })
    .await
    {
        return Err("the watchdog did not finish both recoveries".into());
    }
    println!("\n==> sturdyctl status (the watchdog's journal)");
    let out = watchdog.status(fx, &[]).map_err(|e| e.to_string())?;
    print!("{}", indent(&String::from_utf8_lossy(&out.stdout)));
    Ok(())
}

/// The host pid of a CRI container's init, from its bundle.
fn container_pid(fx: &Containerd, id: &str) -> Option<i32> {
    fx.bundle(sturdy_integration::CRI_NAMESPACE, id)
        .and_then(|b| b.init_pid)
}

/// Running or sleeping (a zombie has already died).
fn running(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !matches!(
            stat.rsplit_once(')')
                .and_then(|(_, r)| r.trim_start().chars().next()),
            Some('Z') | Some('X')
        ),
        Err(_) => false,
    }
}

fn indent(s: &str) -> String {
    s.lines().map(|l| format!("    | {l}\n")).collect()
}

async fn run(args: Args) -> Result<Handler, String> {
    let h = choose(&args)?;
    println!("==> starting a private containerd");
    let mut fx = Containerd::builder()
        .shim_bin(&args.shim)
        .start()
        .await
        .map_err(|e| e.to_string())?;
    println!(
        "    dir {}\n    containerd {} (pid {}), pod subnet {}, images imported",
        fx.dir().display(),
        fx.version().await.unwrap_or_default(),
        fx.pid(),
        fx.subnet().cidr()
    );
    let result = tokio::select! {
        r = demo(&fx, h) => r,
        _ = tokio::signal::ctrl_c() => Err("interrupted".to_string()),
    };
    if let Err(e) = &result {
        eprintln!(
            "\n==> FAILED: {e}\n--- containerd log tail ---\n{}",
            fx.log_tail(30)
        );
    }
    println!("\n==> stopping containerd and removing everything it created");
    let problems = fx.stop();
    if !problems.is_empty() {
        return Err(format!("cleanup left things behind: {problems:?}"));
    }
    println!("    clean");
    result.map(|_| h)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("sturdy-demo: {e}\n");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sturdy-demo: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(h) => {
            println!(
                "\n==> done: the container ran through {} ({})",
                h.name(),
                h.runtime_type()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("sturdy-demo: {e}");
            ExitCode::FAILURE
        }
    }
}
