"""Register a running worker with a controller by hand (upstream's llava.serve.register_worker).

    python -m llava.serve.register_worker --controller-address http://localhost:21001 \
        --worker-name http://localhost:21002 [--check-heart-beat]

The controller asks the worker for its status (/worker_get_status) before listing its models.
"""

from __future__ import annotations

import argparse
import sys

import requests


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--controller-address", default="http://localhost:21001")
    parser.add_argument("--worker-name", required=True, help="the worker's URL")
    parser.add_argument("--check-heart-beat", action="store_true",
                        help="drop the worker when its heartbeats stop")  # fmt: skip
    args = parser.parse_args(argv)
    data = {"worker_name": args.worker_name, "check_heart_beat": args.check_heart_beat, "worker_status": None}
    try:
        r = requests.post(args.controller_address.rstrip("/") + "/register_worker", json=data, timeout=10)
    except requests.RequestException as e:
        print(f"error: cannot reach the controller {args.controller_address}: {e}", file=sys.stderr)
        return 1
    if r.status_code != 200:
        print(f"error: the controller refused {args.worker_name}: {r.text}", file=sys.stderr)
        return 1
    print(f"registered {args.worker_name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
