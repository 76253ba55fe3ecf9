//! `sturdy-tools unpack NAME…`: unpacks archives of `../shared/tools` into the harness's
//! cache (the same verified, keyed cache the fixture uses) and prints each directory. The
//! VM tier runs this on the host first, so a guest that sees the checkout read-only finds
//! the tools already unpacked.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((cmd, names)) = args.split_first() else {
        eprintln!("usage: sturdy-tools unpack NAME…  (e.g. containerd-2.3.4 runc-1.4.3)");
        return ExitCode::from(2);
    };
    if cmd != "unpack" || names.is_empty() {
        eprintln!("usage: sturdy-tools unpack NAME…  (e.g. containerd-2.3.4 runc-1.4.3)");
        return ExitCode::from(2);
    }
    let mut status = ExitCode::SUCCESS;
    for name in names {
        match sturdy_integration::tools::unpacked(name) {
            Ok(dir) => println!("{}", dir.display()),
            Err(e) if e.is_missing() => {
                eprintln!("sturdy-tools: {e}");
                status = ExitCode::from(77);
            }
            Err(e) => {
                eprintln!("sturdy-tools: {e}");
                return ExitCode::from(1);
            }
        }
    }
    status
}
