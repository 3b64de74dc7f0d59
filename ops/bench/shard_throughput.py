#!/usr/bin/env python3
"""Write throughput against the number of shards, same client load.

For each shard count (default 8 and 64) starts a fresh 3-node cluster on 127.0.0.1,
waits until every group has a leader, then runs `midasflow bench` (durable writes,
routed to leaders, 64 connections by default) a few times and reports the ops/s and
latencies of each run, and the ratio of each count's median throughput to the first's.

Throughput on a shared box drifts by tens of percent from one minute to the next, so each
run also reports what drifts less: the CPU the three nodes used per write (utime + stime
from /proc over the whole run) and the writes per Raft entry (from
midasflow_kv_writes_per_proposal). With two shard counts, the medians are fitted to
  CPU per write = W + E / (writes per entry)
which splits a write's CPU into what every write costs (W) and what every entry costs,
shared by the writes in it (E): the many-shards ratio depends on E (docs/performance.md).

Usage: shard_throughput.py BINARY [--shards 8,64] [--runs 3] [--duration-secs 15]
                           [--connections 64] [--out FILE] [-- extra server flags]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

from cluster import Cluster, cpu_seconds, metric_sums, split_extra

PROPOSALS = "midasflow_kv_writes_per_proposal"


def proposal_totals(cluster):
    """Writes proposed and entries proposed, summed over the nodes."""
    sums = [metric_sums(port) for port in cluster.ports.values()]
    return (sum(s.get(PROPOSALS + "_sum", 0.0) for s in sums), sum(s.get(PROPOSALS + "_count", 0.0) for s in sums))


def fit(results):
    """W and E (µs, three nodes together) from the first two shard counts' medians."""
    if len(results) < 2:
        return None
    (c1, b1), (c2, b2) = [(r["median_cpu_us_per_write"], r["median_writes_per_entry"]) for r in results[:2]]
    if not (c1 and c2 and b1 and b2) or abs(1 / b1 - 1 / b2) < 1e-9:
        return None
    per_entry = (c1 - c2) / (1 / b1 - 1 / b2)
    return {"per_write_us": round(c1 - per_entry / b1, 1), "per_entry_us": round(per_entry, 1)}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("binary")
    parser.add_argument("--shards", default="8,64")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration-secs", type=int, default=15)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--out")
    own, extra = split_extra(sys.argv[1:])
    args = parser.parse_args(own)

    results = []
    for shards in [int(s) for s in args.shards.split(",")]:
        cluster = Cluster(args.binary, shards, extra)
        try:
            cluster.start()
            cluster.wait_all_leaders()
            runs = []
            for run in range(args.runs):
                out = os.path.join(cluster.root, f"bench-{run}.json")
                writes0, entries0 = proposal_totals(cluster)
                cpu0 = sum(cpu_seconds(p.pid) for p in cluster.procs.values())
                subprocess.run([args.binary, "bench", "--endpoints", cluster.endpoints(), "--workload", "write",
                                "--connections", str(args.connections), "--duration-secs", str(args.duration_secs),
                                "--seed", str(run + 1), "--out", out], check=True, stdout=subprocess.DEVNULL)
                cpu1 = sum(cpu_seconds(p.pid) for p in cluster.procs.values())
                writes1, entries1 = proposal_totals(cluster)
                with open(out) as f:
                    result = json.load(f)
                ops = result.get("operations") or 0
                result["cpu_us_per_write"] = round((cpu1 - cpu0) * 1e6 / ops, 1) if ops else None
                result["writes_per_entry"] = (round((writes1 - writes0) / (entries1 - entries0), 3)
                                              if entries1 > entries0 else None)
                runs.append(result)
            throughput = [r.get("throughput_ops_per_second") for r in runs]
            cpu = [r["cpu_us_per_write"] for r in runs if r["cpu_us_per_write"]]
            batching = [r["writes_per_entry"] for r in runs if r["writes_per_entry"]]
            results.append({"shards": shards, "runs": runs, "median_ops_per_sec": statistics.median(throughput),
                            "median_cpu_us_per_write": statistics.median(cpu) if cpu else None,
                            "median_writes_per_entry": round(statistics.median(batching), 3) if batching else None})
        finally:
            cluster.remove()
    base = results[0]["median_ops_per_sec"]
    for r in results:
        r["ratio_to_first"] = round(r["median_ops_per_sec"] / base, 3) if base else None
    keys = ("shards", "median_ops_per_sec", "ratio_to_first", "median_cpu_us_per_write", "median_writes_per_entry")
    summary = {"results": [{k: r[k] for k in keys} for r in results], "cost_model": fit(results)}
    print(json.dumps(summary, indent=2))
    if args.out:
        with open(args.out, "a") as f:
            f.write(json.dumps({"flags": extra, "connections": args.connections, "results": results,
                                "cost_model": summary["cost_model"]}) + "\n")


if __name__ == "__main__":
    sys.exit(main())
