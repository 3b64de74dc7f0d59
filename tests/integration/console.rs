//! The web console in a real browser: `midasflow demo --load` as a person starts it, then
//! tests/ui/console_test.py drives Debian's Chromium through Playwright against its /ui
//! (node table, hash ring, isolate and heal with the leaders moving, phone width, keyboard,
//! no JavaScript errors). `.ci/run` installs both. With MIDASFLOW_CONSOLE_SCREENSHOT=PATH
//! the script also saves the README's picture of the console there.
//!
//! Also checks what a person sees in the terminal: the banner is the last thing the demo
//! prints before it is used, its logs (default filter) show no ERROR while it starts, and
//! Ctrl-C (SIGINT) stops it cleanly.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::harness::{serial, wait_child, wait_for};

const BANNER_END: &str = "Ctrl-C stops the cluster.";

/// A base port whose next two ports are free too (the demo's nodes listen on P, P+1, P+2).
fn free_base_port() -> u16 {
    for _ in 0..20 {
        let first = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = first.local_addr().unwrap().port();
        if base > u16::MAX - 2 {
            continue;
        }
        let rest: Vec<_> = (1..=2).map(|i| TcpListener::bind(("127.0.0.1", base + i))).collect();
        if rest.iter().all(|l| l.is_ok()) {
            return base;
        }
    }
    panic!("found no 3 consecutive free ports on 127.0.0.1 in 20 tries");
}

/// Removes terminal colour sequences (ESC [ ... letter) from a log line.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A running `midasflow demo`: killed and reaped on drop; on a failing test its stdout and
/// stderr (the nodes' logs) are printed.
struct Demo {
    child: Child,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Demo {
    fn start(base_port: u16) -> Demo {
        let dir = tempfile::tempdir().unwrap();
        let stderr_path = dir.path().join("demo.stderr");
        let stderr = std::fs::File::create(&stderr_path).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_midasflow"))
            .arg("demo")
            .args(["--base-port", &base_port.to_string()])
            .arg("--load")
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            // The demo's own default log filter, as a person running it gets; no colours in
            // the file.
            .env_remove("RUST_LOG")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("start midasflow demo");
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let pipe = child.stdout.take().unwrap();
        let lines = stdout.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                match line {
                    Ok(line) => lines.lock().unwrap().push(line),
                    Err(_) => break,
                }
            }
        });
        Demo {
            child,
            stdout,
            stderr_path,
            _dir: dir,
        }
    }

    fn stdout_lines(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().unwrap()
    }

    /// SIGINT, as Ctrl-C sends; waits (up to `timeout`) for the demo to exit.
    fn interrupt(&mut self, timeout: Duration) -> ExitStatus {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits pid_t");
        // SAFETY: kill(2) with our own child's pid and a valid signal number.
        let rc = unsafe { libc::kill(pid, libc::SIGINT) };
        assert_eq!(rc, 0, "kill(SIGINT) failed: {}", std::io::Error::last_os_error());
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exited() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the demo did not exit within {timeout:?} of SIGINT"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- demo stdout ---\n{}", self.stdout_lines().join("\n"));
            eprintln!("--- demo stderr ---\n{}", self.stderr());
        }
    }
}

/// Runs the browser test (off the async workers: it blocks), killed at `timeout`.
/// Returns its exit status, stdout and stderr.
async fn run_console_test(url: String, screenshot: Option<String>, timeout: Duration) -> (ExitStatus, String, String) {
    tokio::task::spawn_blocking(move || {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let out_dir = tempfile::tempdir().unwrap();
        let (out_path, err_path) = (out_dir.path().join("stdout"), out_dir.path().join("stderr"));
        let mut command = Command::new("python3");
        command
            .arg(root.join("tests/ui/console_test.py"))
            .args(["--url", &url])
            .current_dir(root)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out_path).unwrap())
            .stderr(std::fs::File::create(&err_path).unwrap());
        if let Some(path) = &screenshot {
            command.args(["--screenshot", path]);
        }
        let mut child = command.spawn().expect("run python3 tests/ui/console_test.py");
        let status = wait_child(&mut child, timeout).unwrap_or_else(|| {
            panic!(
                "tests/ui/console_test.py still ran after {timeout:?}; its output:\n{}\n{}",
                std::fs::read_to_string(&out_path).unwrap_or_default(),
                std::fs::read_to_string(&err_path).unwrap_or_default()
            )
        });
        (
            status,
            std::fs::read_to_string(&out_path).unwrap_or_default(),
            std::fs::read_to_string(&err_path).unwrap_or_default(),
        )
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_in_a_real_browser() {
    let _serial = serial().await;

    // Ports are free when picked but may be taken before the demo binds them: a demo that
    // stops before its banner for that reason is started again on other ports.
    let mut attempt = 0;
    let (mut demo, base) = loop {
        attempt += 1;
        let base = free_base_port();
        let mut demo = Demo::start(base);
        let banner = wait_for(
            "the demo's banner (its last line: 'Ctrl-C stops the cluster.')",
            Duration::from_secs(90),
            || {
                let result = if demo.stdout_lines().iter().any(|l| l.starts_with(BANNER_END)) {
                    Ok(true)
                } else if let Some(status) = demo.exited() {
                    if attempt < 3 && demo.stderr().contains("try --base-port") {
                        Ok(false)
                    } else {
                        panic!("the demo exited ({status}) before its banner")
                    }
                } else {
                    Err(format!("{} stdout lines so far", demo.stdout_lines().len()))
                };
                async move { result }
            },
        )
        .await;
        if banner {
            break (demo, base);
        }
        eprintln!("demo on base port {base} could not bind its ports; trying others");
    };

    // The banner is the last thing on stdout once the cluster serves, and it points at /ui.
    let lines = demo.stdout_lines();
    let end = lines.iter().position(|l| l.starts_with(BANNER_END)).unwrap();
    assert!(
        end + 1 == lines.len(),
        "the demo printed after its banner, before the console was used: {:?}",
        &lines[end + 1..]
    );
    let url = format!("http://127.0.0.1:{base}/ui");
    assert!(
        lines.iter().any(|l| l.trim() == format!("Console: {url}")),
        "the banner does not show 'Console: {url}': {lines:#?}"
    );
    // The nodes' logs at the demo's default filter: nothing at ERROR while it started.
    let errors: Vec<String> = demo
        .stderr()
        .lines()
        .map(strip_ansi)
        .filter(|l| l.contains(" ERROR "))
        .collect();
    assert!(
        errors.is_empty(),
        "the demo logged errors while it started:\n{}",
        errors.join("\n")
    );

    let screenshot = std::env::var("MIDASFLOW_CONSOLE_SCREENSHOT")
        .ok()
        .filter(|s| !s.is_empty());
    let (status, out, err) = run_console_test(url, screenshot, Duration::from_secs(240)).await;
    println!("--- tests/ui/console_test.py stdout ---\n{out}");
    println!("--- tests/ui/console_test.py stderr ---\n{err}");
    assert!(
        status.success(),
        "tests/ui/console_test.py failed ({status}): {}",
        err.lines()
            .rev()
            .find(|l| l.starts_with("FAIL"))
            .unwrap_or("see its output above")
    );
    assert!(
        demo.exited().is_none(),
        "the demo exited while the console was being used"
    );

    // Ctrl-C stops it cleanly and it says so.
    let status = demo.interrupt(Duration::from_secs(30));
    assert!(status.success(), "the demo exited with {status} on SIGINT");
    // The reader thread sees the last lines once the pipe closes.
    let stopped = wait_for("the demo's 'stopped; ...' line", Duration::from_secs(5), || {
        let lines = demo.stdout_lines();
        let result = match lines.last() {
            Some(last) if last.starts_with("stopped; ") => Ok(()),
            other => Err(format!("last stdout line: {other:?}")),
        };
        async move { result }
    });
    stopped.await;
}
