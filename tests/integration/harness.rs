//! Starts, kills and restarts node processes; waits on conditions with deadlines.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::Method;
use midasflow::client::{encode_key_str, Client, ClientAuth, Reply};
use serde_json::Value;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Holds the cluster-test lock (an async lock: it does not poison, so a failed test does
/// not wedge the others).
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    SERIAL.lock().await
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub addrs: BTreeMap<u64, String>,
    pub extra_args: Vec<String>,
    /// Where the nodes' data dirs live (the temp dir unless a test mounts something).
    data_root: PathBuf,
    per_node_args: BTreeMap<u64, Vec<String>>,
    children: BTreeMap<u64, Child>,
    clients: BTreeMap<u64, Client>,
    /// Nodes started with `--join`, and the member addresses they join through.
    joined: BTreeMap<u64, Vec<String>>,
    /// How the test reaches the nodes (for clients of nodes that join later).
    scheme: String,
    auth: ClientAuth,
}

fn free_ports(count: usize) -> Vec<u16> {
    // Hold every listener until all are chosen so no port is picked twice.
    let listeners: Vec<TcpListener> = (0..count).map(|_| TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    listeners.iter().map(|l| l.local_addr().unwrap().port()).collect()
}

impl Cluster {
    /// Starts `nodes` insecure (loopback) server processes with `extra_args` and waits
    /// until every shard has a leader.
    pub async fn start(nodes: u64, extra_args: &[&str]) -> Cluster {
        Self::start_on(nodes, extra_args, None).await
    }

    /// As [`Cluster::start`], with the data dirs under `data_root` when given.
    pub async fn start_on(nodes: u64, extra_args: &[&str], data_root: Option<PathBuf>) -> Cluster {
        let mut args = vec!["--insecure"];
        args.extend_from_slice(extra_args);
        Self::start_full(
            nodes,
            &args,
            |_, _| Vec::new(),
            "http",
            ClientAuth::default(),
            data_root,
        )
        .await
    }

    pub async fn start_with(
        nodes: u64,
        extra_args: &[&str],
        per_node: impl Fn(&std::path::Path, u64) -> Vec<String>,
        scheme: &str,
        auth: ClientAuth,
    ) -> Cluster {
        Self::start_full(nodes, extra_args, per_node, scheme, auth, None).await
    }

    /// A cluster of `nodes` insecure nodes with ports and dirs chosen, none started yet:
    /// the test starts each with [`Cluster::restart`].
    pub fn prepare(nodes: u64, extra_args: &[&str]) -> Cluster {
        let mut args = vec!["--insecure"];
        args.extend_from_slice(extra_args);
        Self::layout(nodes, &args, "http", ClientAuth::default(), None)
    }

    /// Ports, addresses, clients and dirs for `nodes` nodes; nothing started.
    fn layout(nodes: u64, extra_args: &[&str], scheme: &str, auth: ClientAuth, data_root: Option<PathBuf>) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let ports = free_ports(nodes as usize);
        let addrs: BTreeMap<u64, String> = (1..=nodes)
            .zip(ports)
            .map(|(id, port)| (id, format!("127.0.0.1:{port}")))
            .collect();
        let clients = addrs
            .iter()
            .map(|(id, addr)| (*id, Client::with_auth(&format!("{scheme}://{addr}"), auth.clone())))
            .collect();
        Cluster {
            data_root: data_root.unwrap_or_else(|| dir.path().to_path_buf()),
            dir,
            addrs,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            per_node_args: BTreeMap::new(),
            children: BTreeMap::new(),
            clients,
            joined: BTreeMap::new(),
            scheme: scheme.to_string(),
            auth,
        }
    }

    /// Runs node `id` in the foreground, expecting it to refuse to start: returns its exit
    /// status and stderr. A node still running at the deadline is killed and reported.
    pub fn run_expecting_exit(&self, id: u64, timeout: Duration) -> (std::process::ExitStatus, String) {
        std::fs::create_dir_all(self.data_dir(id)).unwrap();
        let mut child = self
            .command(id)
            .env("RUST_LOG", "warn,openraft=error")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start midasflow server");
        let status = wait_child(&mut child, timeout)
            .unwrap_or_else(|| panic!("node {id} was still running after {timeout:?}: it did not refuse to start"));
        let mut stderr = String::new();
        use std::io::Read;
        let _ = child.stderr.take().unwrap().read_to_string(&mut stderr);
        (status, stderr)
    }

    /// Starts `nodes` processes; `per_node(dir, id)` adds arguments for one node (made
    /// before it starts, e.g. its certificates), and the test talks `scheme` with `auth`.
    async fn start_full(
        nodes: u64,
        extra_args: &[&str],
        per_node: impl Fn(&std::path::Path, u64) -> Vec<String>,
        scheme: &str,
        auth: ClientAuth,
        data_root: Option<PathBuf>,
    ) -> Cluster {
        let mut cluster = Self::layout(nodes, extra_args, scheme, auth, data_root);
        for id in 1..=nodes {
            let args = per_node(cluster.dir.path(), id);
            cluster.per_node_args.insert(id, args);
            cluster.spawn(id);
        }
        cluster.wait_healthy(Duration::from_secs(30)).await;
        cluster
    }

    pub fn data_dir(&self, id: u64) -> PathBuf {
        self.data_root.join(format!("node{id}"))
    }

    /// The command line node `id` runs with (to run it by hand in a test): an initial
    /// member gets `--initial-cluster` (the initial members only), a joined node `--join`.
    pub fn command(&self, id: u64) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_midasflow"));
        command
            .arg("server")
            .args(["--node-id", &id.to_string()])
            .args(["--listen", &self.addrs[&id]])
            .arg("--data-dir")
            .arg(self.data_dir(id));
        match self.joined.get(&id) {
            Some(seeds) => command.args(["--join", &seeds.join(",")]),
            None => {
                let initial: Vec<String> = self
                    .addrs
                    .iter()
                    .filter(|(i, _)| !self.joined.contains_key(i))
                    .map(|(i, a)| format!("{i}={a}"))
                    .collect();
                command.args(["--initial-cluster", &initial.join(",")])
            }
        };
        command
            .args(&self.extra_args)
            .args(self.per_node_args.get(&id).into_iter().flatten());
        command
    }

    /// Starts a new node `id` with `--join` through the members `join_to`, the cluster's
    /// extra arguments and `extra`. The cluster owns it like the initial members (killed on
    /// drop, restartable, its log shown on failure). Returns at once: the test waits for
    /// whatever it needs (the node registers and gets replicas by balancing).
    pub fn join(&mut self, id: u64, join_to: &[u64], extra: &[&str]) {
        assert!(!self.addrs.contains_key(&id), "node {id} is already in the cluster");
        let addr = format!("127.0.0.1:{}", free_ports(1)[0]);
        let client = Client::with_auth(&format!("{}://{addr}", self.scheme), self.auth.clone());
        let seeds = join_to.iter().map(|n| self.addrs[n].clone()).collect();
        self.addrs.insert(id, addr);
        self.clients.insert(id, client);
        self.joined.insert(id, seeds);
        self.per_node_args
            .insert(id, extra.iter().map(|s| s.to_string()).collect());
        self.spawn(id);
    }

    /// Runs `midasflow cluster ARGS` against node `via` (off the async workers: it blocks).
    pub async fn cli(&self, via: u64, args: &[&str]) -> CliOutput {
        let mut command = Command::new(env!("CARGO_BIN_EXE_midasflow"));
        command
            .arg("cluster")
            .args(args)
            .args(["--endpoint", &format!("{}://{}", self.scheme, self.addrs[&via])])
            .env("RUST_LOG", "warn");
        let output = tokio::task::spawn_blocking(move || command.output())
            .await
            .unwrap()
            .expect("run midasflow cluster");
        CliOutput {
            success: output.status.success(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    fn spawn(&mut self, id: u64) {
        std::fs::create_dir_all(self.data_dir(id)).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("node{id}.log")))
            .unwrap();
        let child = self
            .command(id)
            .env(
                "RUST_LOG",
                std::env::var("MIDASFLOW_TEST_LOG").unwrap_or_else(|_| "warn,openraft=error".into()),
            )
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start midasflow server");
        self.children.insert(id, child);
    }

    /// SIGKILL: no shutdown path runs, exactly like a crash.
    pub fn kill(&mut self, id: u64) {
        if let Some(mut child) = self.children.remove(&id) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn restart(&mut self, id: u64) {
        assert!(!self.children.contains_key(&id), "node {id} is still running");
        self.spawn(id);
    }

    pub fn live_nodes(&self) -> Vec<u64> {
        self.children.keys().copied().collect()
    }

    pub fn client(&self, id: u64) -> &Client {
        &self.clients[&id]
    }

    /// Waits until every live node is ready and sees a leader for every shard.
    pub async fn wait_healthy(&self, timeout: Duration) {
        let nodes = self.live_nodes();
        wait_until(
            "every live node ready with a leader for every shard",
            timeout,
            || async {
                for id in &nodes {
                    match self.client(*id).get_path("/health").await {
                        Ok(reply) if reply.status == 200 => {
                            let body: Value = serde_json::from_slice(&reply.body).unwrap();
                            if body["healthy"] != Value::Bool(true)
                                || body["shards"].as_array().is_none_or(|s| s.is_empty())
                            {
                                return false;
                            }
                        }
                        _ => return false,
                    }
                    match self.client(*id).get_path("/readyz").await {
                        Ok(reply) if reply.status == 200 => {}
                        _ => return false,
                    }
                }
                true
            },
        )
        .await;
    }

    pub async fn json(&self, id: u64, path: &str) -> Value {
        let reply = self.client(id).get_path(path).await.expect("request");
        assert_eq!(reply.status, 200, "{path}: {}", String::from_utf8_lossy(&reply.body));
        serde_json::from_slice(&reply.body).unwrap()
    }

    /// As [`Cluster::json`], but an error is a value, for use inside waits (a route that
    /// needs the PD leader answers 503 while it changes).
    pub async fn try_json(&self, id: u64, path: &str) -> Result<Value, String> {
        let reply = self
            .client(id)
            .get_path(path)
            .await
            .map_err(|e| format!("{path}: {e}"))?;
        if reply.status != 200 {
            return Err(format!(
                "{path}: {} {}",
                reply.status,
                String::from_utf8_lossy(&reply.body)
            ));
        }
        serde_json::from_slice(&reply.body).map_err(|e| format!("{path}: {e}"))
    }

    /// Sends `body` as JSON with `method` to node `id`.
    pub async fn send_json(&self, id: u64, method: Method, path: &str, body: Value) -> Reply {
        let headers = [("content-type", "application/json".to_string())];
        self.client(id)
            .request(method, path, &headers, Bytes::from(body.to_string()))
            .await
            .expect("request reaches the node")
    }
}

/// Every outcome a [`Writer`] saw, by key.
#[derive(Debug, Default)]
pub struct Writes {
    /// Acknowledged (200): key, value, version.
    pub acked: Vec<(String, String, u64)>,
    /// 504: the write (key, value) may or may not have happened.
    pub unknown: Vec<(String, String)>,
    /// 503, 429 or 421: refused before it was proposed (a write is proposed at most once,
    /// and only a confirmed result or 504 can follow a proposal).
    pub refused: Vec<(String, u16)>,
    /// Anything else (another status, or the node not answering): a failure.
    pub unexpected: Vec<String>,
}

/// A background task writing distinct keys one at a time through one node until stopped.
/// Each key is tried once, so a key's version is 1 and a retried or re-applied write
/// would show.
pub struct Writer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    acked: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<Writes>,
}

impl Writer {
    pub fn start(cluster: &Cluster, via: u64, prefix: &str) -> Writer {
        Self::start_paced(cluster, via, prefix, Duration::ZERO)
    }

    /// As [`Writer::start`], pausing `pause` after each write (so a test can keep writing
    /// through something slow without writing thousands of keys).
    pub fn start_paced(cluster: &Cluster, via: u64, prefix: &str, pause: Duration) -> Writer {
        use std::sync::atomic::Ordering::Relaxed;
        let client = Client::with_auth(
            &format!("{}://{}", cluster.scheme, cluster.addrs[&via]),
            cluster.auth.clone(),
        );
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let acked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let prefix = prefix.to_string();
        let task = tokio::spawn({
            let (stop, acked) = (stop.clone(), acked.clone());
            async move {
                let mut writes = Writes::default();
                for i in 0.. {
                    if stop.load(Relaxed) {
                        break;
                    }
                    let key = format!("{prefix}{i}");
                    let value = format!("value-{i}");
                    let path = format!("/v1/kv/{}", encode_key_str(&key));
                    let reply = client
                        .request(Method::PUT, &path, &[], Bytes::from(value.clone()))
                        .await;
                    match reply {
                        Ok(reply) if reply.status == 200 => {
                            writes.acked.push((key, value, version_of(&reply)));
                            acked.fetch_add(1, Relaxed);
                        }
                        Ok(reply) if reply.status == 504 => writes.unknown.push((key, value)),
                        Ok(reply) if [503, 429, 421].contains(&reply.status.as_u16()) => {
                            writes.refused.push((key, reply.status.as_u16()));
                            // Back off a little: a 429 comes back at once.
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        Ok(reply) => writes.unexpected.push(format!(
                            "PUT {key}: {} {}",
                            reply.status,
                            String::from_utf8_lossy(&reply.body)
                        )),
                        Err(e) => writes.unexpected.push(format!("PUT {key}: {e}")),
                    }
                    if !pause.is_zero() {
                        tokio::time::sleep(pause).await;
                    }
                }
                writes
            }
        });
        Writer { stop, acked, task }
    }

    /// Writes acknowledged so far.
    pub fn acked(&self) -> usize {
        self.acked.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Stops after the write in flight and returns every outcome.
    pub async fn stop(self) -> Writes {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.task.await.expect("the writer task")
    }
}

impl Writes {
    /// Panics unless every error the writer saw is one a client retries.
    pub fn assert_only_retryable_errors(&self) {
        assert!(
            self.unexpected.is_empty(),
            "the writer saw {} errors a client cannot retry, first: {:?}",
            self.unexpected.len(),
            &self.unexpected[..self.unexpected.len().min(5)]
        );
    }

    pub fn summary(&self) -> String {
        let mut refused: BTreeMap<u16, usize> = BTreeMap::new();
        for (_, status) in &self.refused {
            *refused.entry(*status).or_default() += 1;
        }
        format!(
            "{} acknowledged, {} unknown (504), refused {refused:?}, {} unexpected",
            self.acked.len(),
            self.unknown.len(),
            self.unexpected.len()
        )
    }

    /// Reads every key back through node `via` with linearizable GETs (retrying 503, 504
    /// and 429 until the deadline): an acknowledged write with its value and version, a
    /// 504 key either absent or with its value at version 1, a refused key absent.
    pub async fn verify(&self, cluster: &Cluster, via: u64, timeout: Duration) {
        use futures::StreamExt;
        let deadline = Instant::now() + timeout;
        let read = |key: String| async move {
            loop {
                let reply = get(cluster.client(via), &key, "").await;
                if ![503, 504, 429].contains(&reply.status.as_u16()) || Instant::now() > deadline {
                    return (key, reply);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        let shown = |reply: &Reply| format!("{} {}", reply.status, String::from_utf8_lossy(&reply.body));
        let expected: BTreeMap<&str, (&str, u64)> = self
            .acked
            .iter()
            .map(|(k, v, version)| (k.as_str(), (v.as_str(), *version)))
            .collect();
        let unknown: BTreeMap<&str, &str> = self.unknown.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let keys = self
            .acked
            .iter()
            .map(|(k, _, _)| k.clone())
            .chain(self.unknown.iter().map(|(k, _)| k.clone()))
            .chain(self.refused.iter().map(|(k, _)| k.clone()));
        let mut reads = futures::stream::iter(keys.map(read)).buffer_unordered(8);
        while let Some((key, reply)) = reads.next().await {
            let version = reply.header("x-version").and_then(|v| v.parse::<u64>().ok());
            if let Some((value, acked_version)) = expected.get(key.as_str()) {
                assert!(
                    reply.status == 200 && reply.body.as_ref() == value.as_bytes() && version == Some(*acked_version),
                    "acknowledged write {key} = {value} (version {acked_version}) reads back as {}",
                    shown(&reply)
                );
            } else if let Some(value) = unknown.get(key.as_str()) {
                let written = reply.status == 200 && version == Some(1) && reply.body.as_ref() == value.as_bytes();
                assert!(
                    reply.status == 404 || written,
                    "write {key} of unknown outcome reads back as {}",
                    shown(&reply)
                );
            } else {
                assert_eq!(reply.status, 404, "refused write {key} reads back as {}", shown(&reply));
            }
        }
    }
}

/// What a `midasflow cluster` command printed, and whether it exited 0.
#[derive(Debug)]
pub struct CliOutput {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for id in self.live_nodes() {
            self.kill(id);
        }
        // The logs go with the temp dir: show their ends when a test fails.
        if std::thread::panicking() {
            for id in self.addrs.keys() {
                let log = std::fs::read_to_string(self.dir.path().join(format!("node{id}.log"))).unwrap_or_default();
                let lines: Vec<&str> = log.lines().collect();
                let tail: usize = std::env::var("MIDASFLOW_TEST_LOG_TAIL")
                    .ok()
                    .and_then(|t| t.parse().ok())
                    .unwrap_or(40);
                eprintln!("--- node {id} log (last {tail} lines) ---");
                for line in &lines[lines.len().saturating_sub(tail)..] {
                    eprintln!("{line}");
                }
            }
        }
    }
}

/// Waits for `child` to exit, at most `timeout`; past it, kills the child and returns `None`.
pub fn wait_child(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub async fn put(client: &Client, key: &str, value: &[u8], headers: &[(&str, String)]) -> Reply {
    let path = format!("/v1/kv/{}", encode_key_str(key));
    client
        .request(Method::PUT, &path, headers, Bytes::copy_from_slice(value))
        .await
        .expect("PUT reaches the node")
}

pub async fn get(client: &Client, key: &str, query: &str) -> Reply {
    let path = format!("/v1/kv/{}{query}", encode_key_str(key));
    client.get_path(&path).await.expect("GET reaches the node")
}

pub fn version_of(reply: &Reply) -> u64 {
    let body: Value = serde_json::from_slice(&reply.body).unwrap();
    body["version"].as_u64().expect("version in body")
}

/// Polls `probe` until it returns `Ok`, and returns that value; at the deadline, panics
/// with `what` and the last `Err` (what was still missing).
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let last = match probe().await {
            Ok(value) => return value,
            Err(missing) => missing,
        };
        // MIDASFLOW_TEST_TRACE_WAITS=1 shows the progress of every wait (what is missing).
        if std::env::var_os("MIDASFLOW_TEST_TRACE_WAITS").is_some() {
            eprintln!("[{:.1?}] {last}", Instant::now() + timeout - deadline);
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}; last: {last}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls `condition` until it holds, panicking with `what` at the deadline.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if condition().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The sum of the samples of `name` on `node`'s /metrics whose labels contain `labels`.
pub async fn metric_with(cluster: &Cluster, node: u64, name: &str, labels: &str) -> f64 {
    let Ok(reply) = cluster.client(node).get_path("/metrics").await else {
        return 0.0;
    };
    String::from_utf8_lossy(&reply.body)
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']) && l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

pub async fn metric(cluster: &Cluster, node: u64, name: &str) -> f64 {
    metric_with(cluster, node, name, "").await
}

/// The sum of `name` over the given nodes.
pub async fn metric_sum(cluster: &Cluster, nodes: &[u64], name: &str) -> f64 {
    let mut sum = 0.0;
    for node in nodes {
        sum += metric(cluster, *node, name).await;
    }
    sum
}
