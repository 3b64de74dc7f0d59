//! Hostile input on real processes: what a stranger or a broken peer can send to the
//! internal routes and the public API. Afterwards every node lives, every shard takes
//! writes, and nothing written before changed.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use bytes::Bytes;
use hyper::Method;
use midasflow::codec;
use midasflow::raft::batch::{self, BatchItem, ItemAnswer, RaftOp, BATCH_PATH};
use midasflow::raft::LogId;
use midasflow::shard::store::{ShardCommand, ShardConfig as TypeConfig};
use midasflow::shard::{KvOp, Precondition};
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use openraft::{BasicNode, CommittedLeaderId, Entry, EntryPayload, Membership, SnapshotMeta, StoredMembership, Vote};

use crate::harness::{get, put, serial, version_of, Cluster};

const SECRET: &str = "a-cluster-secret-of-some-length";
/// Far above any term the test cluster reaches: without validation, openraft would accept
/// these votes and act on what follows them.
const HIGH_TERM: u64 = 1_000;

fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(term, 0), index)
}

fn put_entry(term: u64, index: u64, history_versions: u32) -> Entry<TypeConfig> {
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Normal(ShardCommand::Kv(KvOp::Put {
            key: b"hostile".to_vec(),
            value: b"x".to_vec(),
            precondition: Precondition::None,
            history_versions,
        })),
    }
}

fn append(prev: Option<LogId>, entries: Vec<Entry<TypeConfig>>, commit: Option<LogId>) -> Vec<u8> {
    codec::encode(&AppendEntriesRequest::<TypeConfig> {
        vote: Vote::new_committed(HIGH_TERM, 3),
        prev_log_id: prev,
        entries,
        leader_commit: commit,
    })
    .unwrap()
}

fn snapshot_chunk(offset: u64, data: Vec<u8>, done: bool) -> Vec<u8> {
    let membership = Membership::new(
        vec![BTreeSet::from([1, 2, 3])],
        (1..=3).map(|i| (i, BasicNode::new("x"))).collect::<BTreeMap<_, _>>(),
    );
    codec::encode(&InstallSnapshotRequest::<TypeConfig> {
        vote: Vote::new_committed(HIGH_TERM, 3),
        meta: SnapshotMeta {
            last_log_id: Some(log_id(HIGH_TERM, 1 << 20)),
            last_membership: StoredMembership::new(Some(log_id(1, 1)), membership),
            snapshot_id: "hostile".into(),
        },
        offset,
        data,
        done,
    })
    .unwrap()
}

/// A shard snapshot holding one record with no versions (apply never writes one, and
/// reading it used to panic): the applied meta, then the shard's state with one
/// (key, record) pair. The layout mirrors `raft::state_machine` and `shard::store`.
fn snapshot_with_empty_record() -> Vec<u8> {
    #[derive(serde::Serialize)]
    struct Applied {
        last_applied: Option<LogId>,
        membership: StoredMembership<u64, BasicNode>,
    }
    #[derive(serde::Serialize)]
    struct Payload {
        applied: Applied,
        state: Vec<u8>,
    }
    #[derive(serde::Serialize)]
    struct ShardState {
        live_keys: u64,
        live_bytes: u64,
        range: Option<(u64, Option<u64>)>,
        records: Vec<(Vec<u8>, Vec<u8>)>,
    }
    let empty_record = codec::encode(&midasflow::shard::KeyRecord { versions: vec![] }).unwrap();
    let state = codec::encode(&ShardState {
        live_keys: 1,
        live_bytes: 0,
        range: None,
        records: vec![(b"k0".to_vec(), empty_record)],
    })
    .unwrap();
    codec::encode(&Payload {
        applied: Applied {
            last_applied: Some(log_id(HIGH_TERM, 1 << 20)),
            membership: StoredMembership::default(),
        },
        state,
    })
    .unwrap()
}

/// A varint length prefix claiming 2^40 bytes, behind the format byte.
fn huge_length_prefix() -> Vec<u8> {
    let mut body = vec![codec::FORMAT, 253];
    body.extend_from_slice(&(1u64 << 40).to_le_bytes());
    body
}

fn raw_post(addr: &str, path: &str, headers: &str, body: &[u8]) -> u16 {
    raw_exchange(addr, path, headers, body).0
}

/// One request on its own connection; the answer's status and body.
fn raw_exchange(addr: &str, path: &str, headers: &str, body: &[u8]) -> (u16, Vec<u8>) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-length: {}\r\nconnection: close\r\n{headers}\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    let _ = stream.write_all(body);
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let status = String::from_utf8_lossy(&answer)
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or_else(Vec::new, |at| answer[at + 4..].to_vec());
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_internal_requests_change_nothing_and_crash_nothing() {
    let _serial = serial().await;
    let secret_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(secret_file.path(), format!("{SECRET}\n")).unwrap();
    let secret_path = secret_file.path().to_str().unwrap().to_string();
    let cluster = Cluster::start(3, &["--cluster-secret-file", &secret_path, "--initial-shards", "4"]).await;
    let client = cluster.client(1);
    let mut before = BTreeMap::new();
    for i in 0..16 {
        let key = format!("k{i}");
        let reply = put(client, &key, key.as_bytes(), &[]).await;
        assert_eq!(reply.status, 200);
        before.insert(key, version_of(&reply));
    }

    // The sender's identity (a node id no incarnation is recorded for) rides on every
    // internal request; the secret is what authenticates it.
    let with_secret = format!(
        "x-midasflow-secret: {SECRET}\r\nx-midasflow-node: 77\r\nx-midasflow-incarnation: {:032x}\r\n",
        7u128
    );
    let secret_only = format!("x-midasflow-secret: {SECRET}\r\n");
    let stranger = format!(
        "x-midasflow-secret: {SECRET}\r\nx-midasflow-node: 99\r\nx-midasflow-incarnation: {:032x}\r\n",
        1u128
    );
    // Node 2 is asked; a message naming another node as its target is not for it.
    let meant_for_3 = format!("{with_secret}x-midasflow-to: 3\r\n");
    let meant_for_2 = format!("{with_secret}x-midasflow-to: 2\r\n");
    let meant_for_nobody = format!("{with_secret}x-midasflow-to: two\r\n");
    let addr = cluster.addrs[&2].clone();
    let cases: Vec<(&str, String, &str, Vec<u8>, u16)> = vec![
        ("no secret", "/internal/pd/heartbeat".into(), "", vec![1, 2, 3], 401),
        (
            "a batch meant for another node",
            BATCH_PATH.into(),
            &meant_for_3,
            vec![1],
            421,
        ),
        (
            "an append meant for another node",
            "/internal/raft/1/append".into(),
            &meant_for_3,
            append(None, vec![put_entry(HIGH_TERM, 0, 8)], None),
            421,
        ),
        (
            "a batch with an unreadable target",
            BATCH_PATH.into(),
            &meant_for_nobody,
            vec![1],
            421,
        ),
        (
            "garbage meant for this node",
            BATCH_PATH.into(),
            &meant_for_2,
            vec![1],
            400,
        ),
        (
            "wrong secret",
            "/internal/raft/1/append".into(),
            "x-midasflow-secret: nope\r\n",
            vec![1],
            401,
        ),
        (
            "no sender identity",
            "/internal/raft/1/append".into(),
            &secret_only,
            vec![1],
            403,
        ),
        (
            "empty body",
            "/internal/raft/1/append".into(),
            &with_secret,
            vec![],
            400,
        ),
        (
            "garbage",
            "/internal/raft/1/vote".into(),
            &with_secret,
            b"\x01garbage!!".to_vec(),
            400,
        ),
        (
            "unknown format",
            "/internal/raft/1/vote".into(),
            &with_secret,
            vec![9, 0, 0],
            400,
        ),
        (
            "huge length prefix (heartbeat)",
            "/internal/pd/heartbeat".into(),
            &with_secret,
            huge_length_prefix(),
            400,
        ),
        (
            "huge length prefix (append)",
            "/internal/raft/1/append".into(),
            &with_secret,
            huge_length_prefix(),
            400,
        ),
        (
            "huge length prefix (snapshot)",
            "/internal/raft/0/snapshot".into(),
            &with_secret,
            huge_length_prefix(),
            400,
        ),
        (
            "oversized heartbeat",
            "/internal/pd/heartbeat".into(),
            &with_secret,
            vec![0; 2 << 20],
            413,
        ),
        (
            "oversized vote",
            "/internal/raft/1/vote".into(),
            &with_secret,
            vec![0; 64 << 10],
            413,
        ),
        (
            "truncated append",
            "/internal/raft/1/append".into(),
            &with_secret,
            append(None, vec![put_entry(HIGH_TERM, 0, 8)], None)[..6].to_vec(),
            400,
        ),
        (
            "append with a gap",
            "/internal/raft/1/append".into(),
            &with_secret,
            append(Some(log_id(1, 1)), vec![put_entry(HIGH_TERM, 5, 8)], None),
            400,
        ),
        (
            "append committing past the log",
            "/internal/raft/2/append".into(),
            &with_secret,
            append(Some(log_id(HIGH_TERM, 2)), vec![], Some(log_id(1, 1 << 30))),
            400,
        ),
        (
            "append with a huge history",
            "/internal/raft/3/append".into(),
            &with_secret,
            append(None, vec![put_entry(HIGH_TERM, 0, u32::MAX)], None),
            400,
        ),
        (
            "vote that names no node",
            "/internal/raft/1/vote".into(),
            &with_secret,
            codec::encode(&VoteRequest::<u64>::new(
                Vote {
                    leader_id: openraft::LeaderId {
                        term: HIGH_TERM,
                        voted_for: None,
                    },
                    committed: true,
                },
                None,
            ))
            .unwrap(),
            400,
        ),
        (
            "snapshot chunk at a huge offset",
            "/internal/raft/1/snapshot".into(),
            &with_secret,
            snapshot_chunk(1 << 40, b"x".to_vec(), false),
            413,
        ),
        (
            // Answered with openraft's SnapshotMismatch (the leader restarts at offset 0).
            "snapshot chunk past a hole",
            "/internal/raft/1/snapshot".into(),
            &with_secret,
            snapshot_chunk(4096, b"x".to_vec(), false),
            200,
        ),
        (
            "snapshot with an empty record",
            "/internal/raft/4/snapshot".into(),
            &with_secret,
            snapshot_chunk(0, snapshot_with_empty_record(), true),
            400,
        ),
        (
            "heartbeat from a stranger",
            "/internal/pd/heartbeat".into(),
            &stranger,
            stranger_heartbeat(),
            400,
        ),
        (
            "heartbeat for another node",
            "/internal/pd/heartbeat".into(),
            &with_secret,
            stranger_heartbeat(),
            403,
        ),
        (
            "batch without a secret",
            BATCH_PATH.into(),
            "",
            vec![2, 0, 0, 0, 0],
            401,
        ),
        (
            "garbage batch",
            BATCH_PATH.into(),
            &with_secret,
            b"\x02garbage!!".to_vec(),
            400,
        ),
        (
            "batch claiming 4 billion messages",
            BATCH_PATH.into(),
            &with_secret,
            vec![codec::FORMAT, 0xff, 0xff, 0xff, 0xff],
            400,
        ),
        (
            "batch with a huge message length",
            BATCH_PATH.into(),
            &with_secret,
            [
                &[codec::FORMAT, 1, 0, 0, 0][..],
                &1u64.to_le_bytes(),
                &[1, 0xff, 0xff, 0xff, 0xff],
            ]
            .concat(),
            400,
        ),
    ];
    for (name, path, headers, body, status) in &cases {
        // Any node may lead the PD; send heartbeats to all so one of them is the leader.
        let targets: Vec<String> = if path.contains("heartbeat") && name.contains("stranger") {
            cluster.addrs.values().cloned().collect()
        } else {
            vec![addr.clone()]
        };
        let statuses: Vec<u16> = targets.iter().map(|a| raw_post(a, path, headers, body)).collect();
        // Nodes that do not lead the PD answer a heartbeat with the leader's address (200,
        // nothing else) or 503 when they know no leader; the leader judges it.
        assert!(
            statuses.contains(status) && statuses.iter().all(|s| *s == *status || *s == 503 || *s == 200),
            "{name}: expected {status}, got {statuses:?}"
        );
    }

    // Hostile messages inside a well-formed batch: each is refused on its own, with the
    // status it gets alone, in the order sent.
    let message = |group: u64, op: RaftOp, body: Vec<u8>| BatchItem {
        group,
        op,
        body: Bytes::from(body),
    };
    let hostile = vec![
        message(
            1,
            RaftOp::Append,
            append(None, vec![put_entry(HIGH_TERM, 0, 8)], None)[..6].to_vec(),
        ),
        message(
            1,
            RaftOp::Append,
            append(Some(log_id(1, 1)), vec![put_entry(HIGH_TERM, 5, 8)], None),
        ),
        message(
            3,
            RaftOp::Append,
            append(None, vec![put_entry(HIGH_TERM, 0, u32::MAX)], None),
        ),
        message(1, RaftOp::Vote, vec![0; 64 << 10]),
        message(2, RaftOp::Append, huge_length_prefix()),
    ];
    let (status, body) = raw_exchange(&addr, BATCH_PATH, &with_secret, &batch::encode_request(&hostile));
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let statuses: Vec<u16> = batch::decode_response(Bytes::from(body))
        .unwrap()
        .into_iter()
        .map(|answer| match answer {
            ItemAnswer::Ok(_) => 200,
            ItemAnswer::Refused { status, .. } => status,
        })
        .collect();
    assert_eq!(statuses, [400, 400, 400, 413, 400]);

    for id in 1..=3 {
        assert_eq!(cluster.client(id).get_path("/livez").await.unwrap().status, 200);
    }
    // Every shard still takes writes, and nothing written before changed.
    cluster.wait_healthy(Duration::from_secs(20)).await;
    for i in 0..32 {
        assert_eq!(
            put(cluster.client(3), &format!("after{i}"), b"ok", &[]).await.status,
            200
        );
    }
    for (key, version) in &before {
        let reply = get(cluster.client(2), key, "").await;
        assert_eq!(reply.status, 200, "{key}");
        assert_eq!(reply.body.as_ref(), key.as_bytes());
        assert_eq!(reply.header("x-version"), Some(version.to_string().as_str()));
    }
    assert_eq!(get(client, "hostile", "").await.status, 404, "no crafted entry applied");
}

fn stranger_heartbeat() -> Vec<u8> {
    codec::encode(&midasflow::node::Heartbeat {
        node_id: 99,
        incarnation: 1,
        cluster_id: None,
        addr: "127.0.0.1:1".into(),
        revision: 0,
        joining: false,
        leading: vec![],
    })
    .unwrap()
}

/// Slow clients hold only their own connections: with 4 request slots, 16 clients that
/// send headers and then trickle nothing of their bodies do not make others get 429, a
/// client that never finishes its head is disconnected, and a stalled body gets 408.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_do_not_starve_others() {
    let _serial = serial().await;
    let cluster = Cluster::start(
        3,
        &[
            "--max-inflight-requests",
            "4",
            "--header-read-timeout-ms",
            "4000",
            "--body-read-timeout-ms",
            "1500",
        ],
    )
    .await;
    let addr = cluster.addrs[&1].clone();
    let mut slow = Vec::new();
    for i in 0..16 {
        let mut stream = TcpStream::connect(&addr).unwrap();
        let head = format!("PUT /v1/kv/slow{i} HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n");
        stream.write_all(head.as_bytes()).unwrap();
        slow.push(stream);
    }
    let mut half_head = TcpStream::connect(&addr).unwrap();
    half_head.write_all(b"GET /livez HTTP/1.1\r\nhost:").unwrap();
    for i in 0..8 {
        let reply = put(cluster.client(1), &format!("fast{i}"), b"v", &[]).await;
        assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
    }
    // The stalled bodies end in 408, with the JSON error body.
    let mut answer = String::new();
    slow[0].set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = slow[0].read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");
    // The half-sent head is cut off: the read ends (EOF or a 408) instead of hanging.
    half_head.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut rest = Vec::new();
    let closed = half_head.read_to_end(&mut rest).is_ok();
    assert!(closed, "a connection that never finished its head was kept open");
    // A new client: the harness's pooled connections idled past the head timeout meanwhile.
    let fresh = midasflow::client::Client::new(&format!("http://{}", cluster.addrs[&2]));
    for i in 0..8 {
        assert_eq!(get(&fresh, &format!("fast{i}"), "").await.status, 200);
    }
}

/// Start-up refuses settings that would stall a group or weaken the cluster, with a clear
/// message, before touching the data dir.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_settings_are_refused_at_start() {
    let _serial = serial().await;
    let cluster = Cluster::start(3, &[]).await;
    let empty_secret = tempfile::NamedTempFile::new().unwrap();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["--insecure".into(), "--max-value-bytes".into(), "40000000".into()],
            "max-value-bytes",
        ),
        (
            vec![
                "--insecure".into(),
                "--cluster-secret-file".into(),
                empty_secret.path().display().to_string(),
            ],
            "secret",
        ),
        (
            vec!["--insecure".into(), "--cluster-secret".into(), "short".into()],
            "secret",
        ),
        (vec![], "--certs-dir"),
    ];
    for (args, expected) in cases {
        let output = tokio::task::spawn_blocking({
            let mut command = cluster_command_without_extra(&cluster, 1);
            command.args(&args);
            move || command.output().unwrap()
        })
        .await
        .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} started");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    // Insecure on a non-loopback address needs the explicit second flag.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_midasflow"))
        .args(["server", "--node-id", "1", "--listen", "0.0.0.0:1", "--insecure"])
        .args(["--data-dir", "/nonexistent", "--initial-cluster", "1=0.0.0.0:1"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--insecure-allow-remote"));
    assert_eq!(
        cluster.client(1).get_path("/livez").await.unwrap().status,
        200,
        "the running cluster is unharmed"
    );
}

/// The node's command line with none of the cluster's extra arguments.
fn cluster_command_without_extra(cluster: &Cluster, id: u64) -> std::process::Command {
    let initial: Vec<String> = cluster.addrs.iter().map(|(i, a)| format!("{i}={a}")).collect();
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_midasflow"));
    command
        .arg("server")
        .args(["--node-id", &id.to_string(), "--listen", "127.0.0.1:1"])
        .arg("--data-dir")
        .arg(cluster.dir.path().join("refused"))
        .args(["--initial-cluster", &initial.join(",")]);
    command
}

/// A request body may not exceed the internal route's own bound even with the secret;
/// the public API keeps answering while internal routes are flooded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_api_serves_while_internal_routes_are_flooded() {
    let _serial = serial().await;
    let cluster = Cluster::start(3, &["--max-inflight-internal", "2"]).await;
    let addr = cluster.addrs[&1].clone();
    let flood: Vec<_> = (0..8)
        .map(|_| {
            let addr = addr.clone();
            std::thread::spawn(move || raw_post(&addr, "/internal/raft/1/vote", "", b"\x01\x00"))
        })
        .collect();
    for i in 0..8 {
        let reply = put(cluster.client(1), &format!("during{i}"), b"v", &[]).await;
        assert_eq!(reply.status, 200);
    }
    for handle in flood {
        let status = handle.join().unwrap();
        assert!(status == 403 || status == 429, "{status}");
    }
    let reply = cluster
        .client(1)
        .request(Method::GET, "/v1/kv/during0", &[], Bytes::new())
        .await
        .unwrap();
    assert_eq!(reply.status, 200);
}

/// Bodies held in memory are bounded: stalled senders declaring large bodies use up the
/// body budget and later bodies get 429 (not an out-of-memory node); once the stalled
/// bodies time out, the budget is back and writes succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffered_request_bodies_are_bounded() {
    let _serial = serial().await;
    let cluster = Cluster::start(
        3,
        &[
            "--max-value-bytes",
            "65536",
            "--max-buffered-body-bytes",
            "6000000",
            "--body-read-timeout-ms",
            "2000",
        ],
    )
    .await;
    let addr = cluster.addrs[&1].clone();
    let mut stalled = Vec::new();
    for i in 0..100 {
        let mut stream = TcpStream::connect(&addr).unwrap();
        let head = format!("PUT /v1/kv/big{i} HTTP/1.1\r\nhost: x\r\ncontent-length: 65536\r\n\r\n");
        stream.write_all(head.as_bytes()).unwrap();
        stalled.push(stream);
    }
    // 100 × 64 KiB is more than the 6 MB budget: the bodies that fit wait and time out
    // (408); the rest are refused (429) without being charged.
    let mut statuses: BTreeMap<String, usize> = BTreeMap::new();
    for stream in &mut stalled {
        stream.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let mut head = [0u8; 12];
        let status = match stream.read_exact(&mut head) {
            Ok(()) => String::from_utf8_lossy(&head[9..12]).into_owned(),
            Err(e) => e.kind().to_string(),
        };
        *statuses.entry(status).or_default() += 1;
    }
    let refused = statuses.get("429").copied().unwrap_or(0);
    let timed_out = statuses.get("408").copied().unwrap_or(0);
    assert!(refused >= 5, "over-budget bodies were not refused: {statuses:?}");
    assert!(
        timed_out >= 80,
        "bodies within the budget should wait, then time out: {statuses:?}"
    );
    assert_eq!(refused + timed_out, 100, "{statuses:?}");
    crate::harness::wait_until(
        "the budget is back after the body timeout",
        Duration::from_secs(15),
        || async { put(cluster.client(1), "after-stall", b"v", &[]).await.status == 200 },
    )
    .await;
    assert_eq!(cluster.client(1).get_path("/livez").await.unwrap().status, 200);
}
