#!/usr/bin/env python3
"""Write throughput against the number of shards, same client load.

For each shard count (default 8 and 64) starts a fresh 3-node cluster on 127.0.0.1,
waits until every group has a leader, then runs `midasflow bench` (durable writes,
routed to leaders, 64 connections by default) a few times and reports the ops/s and
latencies of each run, and the ratio of each count's median throughput to the first's.

Usage: shard_throughput.py BINARY [--shards 8,64] [--runs 3] [--duration-secs 15]
                           [--connections 64] [--out FILE] [-- extra server flags]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

from cluster import Cluster, split_extra


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
                subprocess.run([args.binary, "bench", "--endpoints", cluster.endpoints(), "--workload", "write",
                                "--connections", str(args.connections), "--duration-secs", str(args.duration_secs),
                                "--seed", str(run + 1), "--out", out], check=True, stdout=subprocess.DEVNULL)
                with open(out) as f:
                    runs.append(json.load(f))
            throughput = [r.get("throughput_ops_per_second") for r in runs]
            results.append({"shards": shards, "runs": runs, "median_ops_per_sec": statistics.median(throughput)})
        finally:
            cluster.remove()
    base = results[0]["median_ops_per_sec"]
    for r in results:
        r["ratio_to_first"] = round(r["median_ops_per_sec"] / base, 3) if base else None
    summary = [{k: r[k] for k in ("shards", "median_ops_per_sec", "ratio_to_first")} for r in results]
    print(json.dumps(summary, indent=2))
    if args.out:
        with open(args.out, "a") as f:
            f.write(json.dumps({"flags": extra, "connections": args.connections, "results": results}) + "\n")


if __name__ == "__main__":
    sys.exit(main())
