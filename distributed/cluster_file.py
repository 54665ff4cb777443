"""Checks a cluster-launcher file's machine list before Ray uses it.

Ray's local provider keys its nodes by address, so a worker listed twice (or the head listed
as a worker) silently becomes one node: the cluster comes up smaller than the file says and a
run sized for it waits for resources that never come. `ray up` runs this on the head
(cluster.yaml's head_setup_commands) against the bootstrap copy of the file; run it yourself
first with `python -m distributed.cluster_file cluster.yaml`.
"""
from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import yaml


class ClusterFileError(ValueError):
    pass


def check_machine_list(config: dict) -> None:
    """Raises ClusterFileError naming the address listed more than once."""
    provider = config.get("provider") or {}
    if provider.get("type") != "local":
        return
    workers = [str(ip) for ip in provider.get("worker_ips") or []]
    repeated = sorted(ip for ip, count in Counter(workers).items() if count > 1)
    if repeated:
        raise ClusterFileError(f"provider.worker_ips lists {', '.join(repeated)} more than once: "
                               "each machine once (Ray would count it as one node)")
    head = provider.get("head_ip")
    if head is not None and str(head) in workers:
        raise ClusterFileError(f"provider.worker_ips lists the head {head}: list the head only as head_ip")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m distributed.cluster_file CLUSTER.yaml", file=sys.stderr)
        return 2
    try:
        check_machine_list(yaml.safe_load(Path(argv[0]).expanduser().read_text()) or {})
    except (ClusterFileError, OSError, yaml.YAMLError) as error:
        print(f"error: {argv[0]}: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
