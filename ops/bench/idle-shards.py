#!/usr/bin/env python3
"""Idle cost of many shards: CPU, memory and leader stability of a 3-node cluster.

Starts 3 `midasflow server` processes on 127.0.0.1 with --initial-shards N, waits until
every group has a leader (reported: time to all leaders), writes and reads a sample of
keys, lets the cluster idle, then samples over a window:
  - CPU of the three processes together (utime + stime from /proc/PID/stat), in cores;
  - RSS of each process (VmRSS);
  - leader changes, heartbeat RPCs and vote RPCs counted by /metrics during the window;
  - quiet groups per node.
With --failover it then kill -9s the node leading one idle shard and times the first
successful write to that shard through another node.

Usage: idle-shards.py BINARY [--shards N] [--idle-secs S] [--window-secs S]
                      [--failover] [--out FILE] [-- extra server flags]
Results are printed as JSON and appended to --out. Standard library only. Every process
it starts is stopped by PID; the data dirs are deleted.
"""
import argparse
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

HOST = "127.0.0.1"
TICKS = os.sysconf("SC_CLK_TCK")


def call(port, method, path, body=None, timeout=10.0):
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request(method, path, body=body)
        resp = conn.getresponse()
        return resp.status, resp.read()
    except (OSError, http.client.HTTPException) as e:
        return -1, str(e).encode()
    finally:
        conn.close()


def metric_sums(port):
    """Sums every sample of each metric name on one node's /metrics."""
    status, body = call(port, "GET", "/metrics")
    sums = {}
    if status != 200:
        return sums
    for line in body.decode().splitlines():
        if not line or line.startswith("#"):
            continue
        name = line.split("{")[0].split(" ")[0]
        try:
            sums[name] = sums.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
        except ValueError:
            pass
    return sums


def free_port():
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("binary")
    parser.add_argument("--shards", type=int, default=1000)
    parser.add_argument("--idle-secs", type=float, default=30)
    parser.add_argument("--window-secs", type=float, default=60)
    parser.add_argument("--probe-keys", type=int, default=200)
    parser.add_argument("--failover", action="store_true")
    parser.add_argument("--out")
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    args = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    args.extra = extra

    root = tempfile.mkdtemp(prefix="midasflow-idle-")
    ports = {n: free_port() for n in (1, 2, 3)}
    initial = ",".join(f"{n}={HOST}:{p}" for n, p in ports.items())
    procs = {}
    result = {"shards": args.shards, "flags": args.extra}
    try:
        started = time.time()
        for n, port in ports.items():
            log = open(os.path.join(root, f"node{n}.log"), "w")
            cmd = [args.binary, "server", "--insecure", "--node-id", str(n), "--listen", f"{HOST}:{port}",
                   "--data-dir", os.path.join(root, f"d{n}"), "--initial-cluster", initial,
                   "--initial-shards", str(args.shards)] + args.extra
            procs[n] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
            log.close()
        groups = args.shards + 1
        deadline = time.time() + 600
        while True:
            leaders = sum(metric_sums(p).get("midasflow_raft_leaders", 0) for p in ports.values())
            if leaders >= groups:
                break
            if time.time() > deadline:
                raise SystemExit(f"only {leaders} of {groups} groups have a leader after 600 s")
            time.sleep(0.5)
        result["secs_to_all_leaders"] = round(time.time() - started, 1)

        probe_started, shards_written = time.time(), set()
        for i in range(args.probe_keys):
            key = f"idle-probe-{i}"
            status, body = call(ports[1 + i % 3], "PUT", f"/v1/kv/{key}", body=b"v")
            if status != 200:
                raise SystemExit(f"write {key}: {status} {body[:200]!r}")
            shards_written.add(json.loads(body)["shard"])
            status, _ = call(ports[1 + (i + 1) % 3], "GET", f"/v1/kv/{key}")
            if status != 200:
                raise SystemExit(f"read {key}: {status}")
        result["probe_writes_and_reads"] = args.probe_keys
        result["probe_shards"] = len(shards_written)
        result["probe_secs"] = round(time.time() - probe_started, 1)

        time.sleep(args.idle_secs)
        before = {n: metric_sums(p) for n, p in ports.items()}
        cpu0 = sum(cpu_seconds(p.pid) for p in procs.values())
        t0 = time.time()
        time.sleep(args.window_secs)
        cpu1 = sum(cpu_seconds(p.pid) for p in procs.values())
        elapsed = time.time() - t0
        after = {n: metric_sums(p) for n, p in ports.items()}

        def delta(name):
            return int(sum(after[n].get(name, 0) - before[n].get(name, 0) for n in ports))

        result["idle_window_secs"] = round(elapsed, 1)
        result["idle_cpu_cores_total"] = round((cpu1 - cpu0) / elapsed, 3)
        result["rss_mb"] = {n: round(rss_mb(p.pid), 1) for n, p in procs.items()}
        result["leader_changes_in_window"] = delta("midasflow_raft_leader_changes_total")
        result["heartbeat_rpcs_in_window"] = delta("midasflow_raft_heartbeat_rpcs_total")
        result["vote_rpcs_in_window"] = delta("midasflow_raft_vote_rpcs_total")
        result["quiet_groups"] = {n: int(after[n].get("midasflow_raft_quiet_groups", 0)) for n in ports}

        if args.failover:
            status, body = call(ports[1], "PUT", "/v1/kv/idle-probe-0", body=b"w")
            shard = json.loads(body)["shard"]
            time.sleep(args.idle_secs)  # the write woke it: let it go quiet again
            status, body = call(ports[1], "GET", f"/v1/shards/{shard}")
            leader = json.loads(body).get("leader")
            survivor = next(n for n in ports if n != leader)
            procs[leader].send_signal(signal.SIGKILL)
            procs[leader].wait()
            killed = time.time()
            while time.time() - killed < 60:
                status, _ = call(ports[survivor], "PUT", "/v1/kv/idle-probe-0", body=b"x", timeout=15)
                if status == 200:
                    break
                time.sleep(0.05)
            result["failover_shard"] = shard
            result["secs_to_first_write_after_leader_kill"] = round(time.time() - killed, 2) if status == 200 else None
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(result, indent=2))
    if args.out:
        with open(args.out, "a") as f:
            f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    sys.exit(main())
