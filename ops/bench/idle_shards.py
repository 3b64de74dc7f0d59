#!/usr/bin/env python3
"""Idle cost of many shards: CPU, memory and leader stability of a 3-node cluster.

Starts 3 `midasflow server` processes on 127.0.0.1 with --initial-shards N, waits until
every group has a leader (reported: time to all leaders), writes and reads a sample of
keys, lets the cluster idle, then samples over a window:
  - CPU of the three processes together (utime + stime from /proc/PID/stat), in cores;
  - RSS of each process (VmRSS);
  - leader changes, heartbeat RPCs and vote RPCs counted by /metrics during the window;
  - quiet groups per node.
With --restart it then stops all three nodes (SIGTERM) and times their restart until
every group has a leader again and a write succeeds through each node; with
--restart-load CONNS, `midasflow bench` drives writes and linearizable reads (CONNS
connections each, sent to any node, which forwards) from the moment the nodes start again
until every group has a leader, and the restart's campaigns, vote requests and the most
campaign slots a node held are reported. With --failover
it then kill -9s the node leading one idle shard and times the first successful write to
that shard through another node.

Usage: idle_shards.py BINARY [--shards N] [--idle-secs S] [--window-secs S]
                      [--restart [--restart-load CONNS]] [--failover] [--out FILE]
                      [-- extra server flags]
Results are printed as JSON and appended to --out.
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import time

from cluster import Cluster, call, cpu_seconds, metric_sums, rss_mb, split_extra


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("binary")
    parser.add_argument("--shards", type=int, default=1000)
    parser.add_argument("--idle-secs", type=float, default=30)
    parser.add_argument("--window-secs", type=float, default=60)
    parser.add_argument("--probe-keys", type=int, default=200)
    parser.add_argument("--restart", action="store_true")
    parser.add_argument("--restart-load", type=int, default=0, metavar="CONNS")
    parser.add_argument("--failover", action="store_true")
    parser.add_argument("--out")
    own, extra = split_extra(sys.argv[1:])
    args = parser.parse_args(own)

    cluster = Cluster(args.binary, args.shards, extra)
    ports, procs = cluster.ports, cluster.procs
    result = {"shards": args.shards, "flags": extra}
    load = []
    try:
        started = time.time()
        cluster.start()
        cluster.wait_all_leaders()
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

        if args.restart:
            cluster.stop()
            restarted = time.time()
            cluster.start()
            if args.restart_load:
                load = start_load(args.binary, cluster, args.restart_load)
                result["restart_load_connections"] = args.restart_load
            most_slots = {n: 0 for n in ports}

            def sample(sums):
                for n, node_sums in sums.items():
                    campaigning = int(node_sums.get("midasflow_raft_campaigning_replicas", 0))
                    most_slots[n] = max(most_slots[n], campaigning)

            cluster.wait_all_leaders(on_sample=sample)
            result["restart_secs_to_all_leaders"] = round(time.time() - restarted, 1)
            stop_load(load)
            load = []
            # Counters started again with the processes: these are the restart's.
            sums = {n: metric_sums(p) for n, p in ports.items()}
            result["restart_campaigns"] = int(sum(s.get("midasflow_raft_campaigns_total", 0) for s in sums.values()))
            result["restart_vote_rpcs"] = int(sum(s.get("midasflow_raft_vote_rpcs_total", 0) for s in sums.values()))
            result["restart_most_campaign_slots_held"] = most_slots
            for n, port in ports.items():
                while call(port, "PUT", "/v1/kv/idle-probe-1", body=b"r")[0] != 200:
                    if time.time() - restarted > 600:
                        raise SystemExit(f"no write through node {n} after the restart")
                    time.sleep(0.1)
            result["restart_secs_to_writes_through_every_node"] = round(time.time() - restarted, 1)
            time.sleep(args.idle_secs)

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
        stop_load(load)
        cluster.remove()
    print(json.dumps(result, indent=2))
    if args.out:
        with open(args.out, "a") as f:
            f.write(json.dumps(result) + "\n")


def start_load(binary, cluster, connections):
    """Writes and linearizable reads, sent round-robin to the nodes, for up to 10 minutes."""
    procs = []
    for workload in ("write", "read"):
        cmd = [binary, "bench", "--endpoints", cluster.endpoints(), "--workload", workload, "--routing", "any",
               "--connections", str(connections), "--duration-secs", "600", "--keys", "10000",
               "--out", os.path.join(cluster.root, f"restart-load-{workload}.json")]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    return procs


def stop_load(procs):
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


if __name__ == "__main__":
    sys.exit(main())
