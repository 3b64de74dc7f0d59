//! `ops/` checked for real: the rule files and their unit tests under promtool, the
//! deployment files under their validators, and a real Prometheus scraping a real 3-node
//! cluster with the shipped alert rules — every rule evaluates, and killing a node makes
//! the node-down alert go pending. The tools come from Debian's `prometheus` and
//! `docker-compose` packages and PyPI's `kubernetes-validate`; `.ci/run` installs them.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use midasflow::client::Client;
use serde_json::Value;

use crate::harness::{put, serial, wait_for, wait_until, Cluster};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `program` from the repository root and fails the test, with its output, unless it
/// succeeds. A missing tool fails too, naming what installs it.
fn check(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .current_dir(repo())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} ({e}); `.ci/run` installs the ops tools"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{program} {args:?} failed:\n{text}");
    text
}

fn files(dir: &str, extension: &str) -> Vec<String> {
    let mut found: Vec<String> = std::fs::read_dir(repo().join(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == extension))
        .map(|p| p.strip_prefix(repo()).unwrap().display().to_string())
        .collect();
    found.sort();
    assert!(!found.is_empty(), "no .{extension} files in {dir}");
    found
}

/// promtool on both scrape configs (`check config --lint=all`), the rules
/// (`check rules --lint=all`) and their unit tests (`test rules`), and yamllint.
#[test]
fn prometheus_configs_and_rules_pass_promtool() {
    check("bash", &["ops/prometheus/check.sh"]);
    check(
        "yamllint",
        &["-s", "-c", "ops/.yamllint", "ops/prometheus", "ops/grafana"],
    );
}

#[test]
fn deployment_files_validate() {
    check("sh", &["ops/k8s/check.sh"]);
    check("sh", &["ops/compose/check.sh"]);
}

/// The committed OpenAPI document (kept equal to the served one by a unit test in
/// `src/api/openapi.rs`) is valid OpenAPI 3.1.
#[test]
fn openapi_document_validates() {
    let output = check("bash", &["ops/openapi-check.sh"]);
    assert!(output.contains("OK"), "{output}");
}

/// A Prometheus server the test started; killed when dropped.
struct Prometheus {
    child: Child,
    client: Client,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self._dir.path().join("prometheus.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            eprintln!("--- prometheus log (last 30 lines) ---");
            tail.iter().rev().for_each(|l| eprintln!("{l}"));
        }
    }
}

impl Prometheus {
    /// Scrapes `targets` every 2 s (a slow scrape on a loaded machine must not look like a
    /// node down) and evaluates the shipped rules every second.
    fn start(targets: &[String]) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let rules: Vec<String> = files("ops/prometheus/rules", "yml")
            .iter()
            .map(|f| format!("  - {}", repo().join(f).display()))
            .collect();
        let targets: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
        let config = format!(
            "global:\n  scrape_interval: 2s\n  scrape_timeout: 2s\n  evaluation_interval: 1s\n\
             rule_files:\n{}\n\
             scrape_configs:\n  - job_name: midasflow\n    static_configs:\n      - targets: [{}]\n",
            rules.join("\n"),
            targets.join(", ")
        );
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).unwrap();
        check("promtool", &["check", "config", config_path.to_str().unwrap()]);
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start prometheus (Debian's prometheus package; `.ci/run` installs it)");
        Prometheus {
            child,
            client: Client::new(&format!("http://127.0.0.1:{port}")),
            _dir: dir,
        }
    }

    /// `data` of a Prometheus API answer, or why there is none.
    async fn api(&self, path: &str) -> Result<Value, String> {
        let reply = self.client.get_path(path).await.map_err(|e| e.to_string())?;
        let body: Value = serde_json::from_slice(&reply.body).map_err(|e| e.to_string())?;
        if body["status"] != "success" {
            return Err(format!("{path}: {body}"));
        }
        Ok(body["data"].clone())
    }

    /// The samples of an instant query, as (labels, value).
    async fn query(&self, promql: &str) -> Result<Vec<(Value, f64)>, String> {
        let encoded = percent_encoding::utf8_percent_encode(promql, percent_encoding::NON_ALPHANUMERIC);
        let data = self.api(&format!("/api/v1/query?query={encoded}")).await?;
        Ok(data["result"]
            .as_array()
            .ok_or("no result")?
            .iter()
            .map(|s| {
                (
                    s["metric"].clone(),
                    s["value"][1].as_str().unwrap_or("NaN").parse().unwrap_or(f64::NAN),
                )
            })
            .collect())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_a_cluster_and_the_alerts_work() {
    let _serial = serial().await;
    let mut cluster = Cluster::start(3, &[]).await;
    cluster.wait_healthy(Duration::from_secs(30)).await;
    for i in 0..20 {
        let reply = put(cluster.client(1 + i % 3), &format!("ops-{i}"), b"v", &[]).await;
        assert_eq!(reply.status, 200);
    }

    let targets: Vec<String> = cluster.addrs.values().cloned().collect();
    let prometheus = Prometheus::start(&targets);
    wait_until(
        "Prometheus sees all three targets up",
        Duration::from_secs(60),
        || async {
            prometheus
                .query("up{job=\"midasflow\"} == 1")
                .await
                .is_ok_and(|s| s.len() == 3)
        },
    )
    .await;
    // A few series, as Prometheus stored them.
    let build = prometheus.query("midasflow_build_info").await.unwrap();
    assert_eq!(build.len(), 3, "{build:?}");
    assert!(build
        .iter()
        .all(|(labels, value)| *value == 1.0 && labels["version"] == env!("CARGO_PKG_VERSION")));
    wait_until(
        "exactly one PD leader exports its gauges",
        Duration::from_secs(30),
        || async {
            let leaders = prometheus.query("sum(midasflow_pd_is_leader)").await;
            let shards = prometheus
                .query("midasflow_pd_shards and on(instance, node) midasflow_pd_is_leader == 1")
                .await;
            leaders.is_ok_and(|l| l.len() == 1 && l[0].1 == 1.0) && shards.is_ok_and(|s| s.len() == 1 && s[0].1 >= 1.0)
        },
    )
    .await;
    // Each node's exposition lints clean, and every name the dashboards and rules use
    // exists on some node (the PD's per-store gauges only on the PD leader).
    let dir = tempfile::tempdir().unwrap();
    let mut metrics_args = vec!["ops/grafana/check_dashboards.py".to_string()];
    for node in cluster.live_nodes() {
        let metrics_text = cluster.client(node).get_path("/metrics").await.unwrap().body;
        let metrics_file = dir.path().join(format!("metrics-{node}.txt"));
        std::fs::write(&metrics_file, &metrics_text).unwrap();
        metrics_args.extend(["--metrics".to_string(), metrics_file.display().to_string()]);
        let mut lint = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("promtool (Debian's prometheus package)");
        std::io::Write::write_all(&mut lint.stdin.take().unwrap(), &metrics_text).unwrap();
        let lint = lint.wait_with_output().unwrap();
        assert!(
            lint.status.success(),
            "promtool check metrics on node {node}: {}{}",
            String::from_utf8_lossy(&lint.stdout),
            String::from_utf8_lossy(&lint.stderr)
        );
    }
    check("python3", &metrics_args.iter().map(String::as_str).collect::<Vec<_>>());

    let writes = prometheus.query("sum(midasflow_kv_writes_total)").await.unwrap();
    assert!(writes[0].1 >= 20.0, "{writes:?}");

    // Every recording and alerting rule evaluates without error.
    let rule_count = wait_for("every rule evaluated, healthy", Duration::from_secs(60), || async {
        let groups = prometheus.api("/api/v1/rules").await?;
        let rules: Vec<&Value> = groups["groups"]
            .as_array()
            .ok_or("no rule groups")?
            .iter()
            .flat_map(|g| g["rules"].as_array().into_iter().flatten())
            .collect();
        let errors: Vec<String> = rules
            .iter()
            .filter(|r| r["health"] == "err")
            .map(|r| format!("{}: {}", r["name"], r["lastError"]))
            .collect();
        assert!(errors.is_empty(), "rules failing to evaluate: {errors:?}");
        let unevaluated = rules.iter().filter(|r| r["health"] != "ok").count();
        if unevaluated > 0 {
            return Err(format!("{unevaluated} of {} rules not evaluated yet", rules.len()));
        }
        Ok(rules.len())
    })
    .await;
    let shipped: usize = files("ops/prometheus/rules", "yml")
        .iter()
        .map(|f| {
            let text = std::fs::read_to_string(repo().join(f)).unwrap();
            text.lines()
                .filter(|l| l.trim_start().starts_with("- alert:") || l.trim_start().starts_with("- record:"))
                .count()
        })
        .sum();
    assert_eq!(rule_count, shipped, "Prometheus loaded a different number of rules");
    // The recorded cluster view, from the PD leader: every node up, every shard led.
    for (promql, expected) in [
        ("job_state:midasflow_pd_nodes:leader{state=\"up\"}", 3.0),
        ("job:midasflow_pd_shards_without_leader:leader", 0.0),
        ("job:midasflow_pd_shards_quorum_lost:leader", 0.0),
        ("count(instance_node:midasflow_disk_available:ratio > 0)", 3.0),
    ] {
        wait_until(&format!("{promql} = {expected}"), Duration::from_secs(30), || async {
            prometheus
                .query(promql)
                .await
                .is_ok_and(|s| s.len() == 1 && s[0].1 == expected)
        })
        .await;
    }
    let shards = prometheus.query("job:midasflow_pd_shards:leader").await.unwrap();
    assert!(shards.len() == 1 && shards[0].1 >= 1.0, "{shards:?}");

    // A node dies: its target goes down and the node-down alert goes pending for it, and
    // for no other node.
    let dead_addr = cluster.addrs[&3].clone();
    cluster.kill(3);
    let alerts = wait_for(
        "MidasflowNodeDown pending for node 3",
        Duration::from_secs(60),
        || async {
            let alerts = prometheus.query("ALERTS{alertname=\"MidasflowNodeDown\"}").await?;
            if alerts
                .iter()
                .any(|(labels, _)| labels["instance"] == dead_addr.as_str())
            {
                Ok(alerts)
            } else {
                Err(format!("not yet: {alerts:?}"))
            }
        },
    )
    .await;
    assert!(
        alerts.iter().all(|(labels, _)| labels["instance"] == dead_addr.as_str()
            && (labels["alertstate"] == "pending" || labels["alertstate"] == "firing")),
        "{alerts:?}"
    );
}
