//! The real `herald` binary refuses an empty or damaged store file with a message and exit code
//! 65 (EX_DATAERR), and a store it cannot create for a system reason with 74 (EX_IOERR), instead
//! of panicking (exit 101) or starting a fresh database with new signing keys.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use herald_tests::{Serve, herald_bin, push_body};
use serde_json::json;

/// Runs `herald control-plane` on `data` (ports chosen by the kernel) and returns its exit code
/// and stderr; a process still running after the deadline is killed and fails the test.
fn control_plane_exit(data: &Path) -> anyhow::Result<(Option<i32>, String)> {
    let mut child = Command::new(herald_bin())
        .arg("control-plane")
        .arg("--data")
        .arg(data)
        .args(["--admin", "127.0.0.1:0", "--link", "127.0.0.1:0"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let end = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!("herald started on {} instead of refusing it", data.display());
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut err)?;
    Ok((status.code(), err))
}

#[test]
fn an_empty_or_damaged_store_exits_65_and_an_unusable_data_path_74() -> anyhow::Result<()> {
    // A real store with a key, a device and a push, closed cleanly.
    let h = Serve::start()?;
    h.admin.token("alice", "phone");
    h.admin.push(push_body(json!({"user": "alice"}), "kept"));
    h.proc.signal(libc::SIGTERM);
    let mut h = h;
    assert!(h.proc.wait_exit()?.success());
    let file = h.data.path().join("herald.redb");
    let len = std::fs::metadata(&file)?.len();

    // Truncated to half: refused, not a panic.
    let f = std::fs::OpenOptions::new().write(true).open(&file)?;
    f.set_len(len / 2)?;
    drop(f);
    let (code, err) = control_plane_exit(h.data.path())?;
    assert_eq!(code, Some(65), "{err}");
    assert!(err.contains("herald.redb is damaged") && err.contains("refusing to start"), "{err}");
    assert!(!err.contains("panicked at"), "redb's caught panic is not printed as a crash: {err}");

    // Empty: refused, and left empty (no fresh database, no new signing key).
    std::fs::write(&file, b"")?;
    let (code, err) = control_plane_exit(h.data.path())?;
    assert_eq!(code, Some(65), "{err}");
    assert!(err.contains("is empty; refusing to start a new database"), "{err}");
    assert_eq!(std::fs::metadata(&file)?.len(), 0);

    // The data directory is a regular file: a system problem, EX_IOERR.
    let not_dir = h.data.path().join("not-a-dir");
    std::fs::write(&not_dir, b"x")?;
    let (code, err) = control_plane_exit(&not_dir)?;
    assert_eq!(code, Some(74), "{err}");
    Ok(())
}
