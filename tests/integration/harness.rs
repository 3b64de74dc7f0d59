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
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("node {id} was still running after {timeout:?}: it did not refuse to start");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
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

    /// The command line node `id` runs with (to run it by hand in a test).
    pub fn command(&self, id: u64) -> Command {
        let initial: Vec<String> = self.addrs.iter().map(|(i, a)| format!("{i}={a}")).collect();
        let mut command = Command::new(env!("CARGO_BIN_EXE_midasflow"));
        command
            .arg("server")
            .args(["--node-id", &id.to_string()])
            .args(["--listen", &self.addrs[&id]])
            .arg("--data-dir")
            .arg(self.data_dir(id))
            .args(["--initial-cluster", &initial.join(",")])
            .args(&self.extra_args)
            .args(self.per_node_args.get(&id).into_iter().flatten());
        command
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
