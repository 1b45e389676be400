"""Fuzz the `/v1` routes from `/openapi.json` with schemathesis, access control on; no request may get a 5xx.

    python -m experiments.fuzz_api                      # trains the 7-concept test pack, fuzzes ~5 min per seed
    python -m experiments.fuzz_api --probe-pack PATH --seeds 0 1 2 --max-time 120

Starts `python app.py` on a free loopback port with a users file (the fuzzer sends an admin's
key, so every route is reachable; schemathesis' `ignored_auth` check also sends none and a
wrong one), its own SQLite record store and HATCAT_MAX_TOKENS=8 (short generations); the rate
limit and the failed-key throttle are off so that the fuzzer is not answered 429 throughout. Runs `st run` once per seed with
every check, then reads the server's own request counter (`/metrics`, by route and status) for
the ground truth on status codes. Writes `results/fuzz_api.json`: cases run, responses by
status, 5xx found (expected 0), and the schemathesis checks that failed per seed (non-5xx
findings, kept for the record).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import Counter
from importlib.metadata import version
from pathlib import Path

import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families

from hatcat.paths import RESULTS, ROOT
from tests.support import start_app, stop_app, train_small_pack


def request_counts(base: str) -> Counter:
    """(route, method, status) -> requests, from the server's own counter."""
    counts: Counter = Counter()
    for family in text_string_to_metric_families(httpx.get(f"{base}/metrics", timeout=10).text):
        if family.name == "hatcat_requests":
            for sample in family.samples:
                if sample.name == "hatcat_requests_total":
                    counts[(sample.labels["route"], sample.labels["method"], sample.labels["status"])] += int(
                        sample.value
                    )
    return counts


def junit_failures(path: Path) -> dict[str, list[str]]:
    """Operation -> the failure messages schemathesis reported for it."""
    failures: dict[str, list[str]] = {}
    if not path.is_file():
        return failures
    for case in ET.parse(path).getroot().iter("testcase"):
        for failure in list(case.iter("failure")) + list(case.iter("error")):
            text = (failure.get("message") or failure.text or "").strip()
            failures.setdefault(case.get("name", "?"), []).append(text.splitlines()[0][:200] if text else "?")
    return failures


def users_file(work: Path) -> tuple[Path, str]:
    """A users file with one admin who has one key; returns it and the key."""
    from hatcat.access import new_key

    key_id, key, stored = new_key()
    path = work / "users.yaml"
    path.write_text(yaml.safe_dump({"users": {"fuzzer": {"role": "admin", "keys": {key_id: stored}}}}))
    return path, key


def fuzz(base: str, key: str, seed: int, args: argparse.Namespace, junit: Path) -> subprocess.CompletedProcess:
    command = [
        "st",
        "run",
        f"{base}/openapi.json",
        "--include-path-regex",
        "^/v1/",
        "--header",
        f"Authorization: Bearer {key}",
        "--checks",
        "all",
        "--phases",
        args.phases,
        "--max-examples",
        str(args.max_examples),
        "--max-time",
        str(args.max_time),
        "--seed",
        str(seed),
        "--generation-database",
        "none",  # no .schemathesis/ folder in the work tree
        "--workers",
        "1",
        "--request-timeout",
        "120",
        "--max-response-time",
        "120",  # 2 shared cores: a long prompt can take 10+ s
        "--continue-on-failure",
        "--report",
        "junit",
        "--report-junit-path",
        str(junit),
        "--no-color",
    ]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probe-pack", type=Path, help="probe pack folder (default: train the 7-concept test pack)")
    parser.add_argument("--max-examples", type=int, default=40, help="examples per operation and phase")
    parser.add_argument("--max-time", type=int, default=300, help="time budget per seed, seconds")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--phases", default="examples,coverage,fuzzing,stateful", help="schemathesis phases")
    parser.add_argument("--out", type=Path, default=RESULTS / "fuzz_api.json")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="hatcat-fuzz-"))
    if args.probe_pack is None:
        from hatcat.config import Settings
        from hatcat.model import load_model

        settings = Settings.from_env()
        loaded = load_model(settings.model_name, settings.device, settings.dtype, settings.cache_dir)
        pack = train_small_pack(loaded, settings.cache_dir, work / "pack")
        del loaded
    else:
        pack = args.probe_pack
    users, key = users_file(work)
    env = {
        "HATCAT_PROBE_PACK": str(pack),
        "HATCAT_MAX_TOKENS": "8",
        "HATCAT_API_KEY": "",
        "HATCAT_USERS_FILE": str(users),
        "HATCAT_DB": str(work / "hatcat.db"),
        "HATCAT_RATE_LIMIT": "0",
        "HATCAT_AUTH_FAILURES": "0",
    }
    proc, base = start_app(env, work / "server.log")
    runs = {}
    try:
        before = request_counts(base)
        started = time.monotonic()
        for seed in args.seeds:
            junit = work / f"junit-{seed}.xml"
            run = fuzz(base, key, seed, args, junit)
            (work / f"schemathesis-{seed}.txt").write_text(run.stdout + run.stderr)
            runs[seed] = {
                "schemathesis_exit_code": run.returncode,
                "schemathesis_failures": junit_failures(junit),
                "schemathesis_summary": run.stdout.strip().splitlines()[-12:],
            }
        seconds = time.monotonic() - started
        counts = request_counts(base) - before
    finally:
        stop_app(proc)

    v1 = Counter({key: n for key, n in counts.items() if key[0].startswith("/v1")})
    by_status, by_operation = Counter(), Counter()
    for (route, method, status), n in v1.items():
        by_status[status] += n
        by_operation[f"{method} {route}"] += n
    server_errors = {
        f"{method} {route} -> {status}": n for (route, method, status), n in v1.items() if status.startswith("5")
    }
    result = {
        "tool": f"schemathesis {version('schemathesis')}",
        "command": "python -m experiments.fuzz_api " + " ".join(sys.argv[1:]),
        "access_control": "users file, admin key sent; the ignored_auth check sends none or a wrong one",
        "checks": "all",
        "max_examples": args.max_examples,
        "max_time_s_per_seed": args.max_time,
        "seeds": args.seeds,
        "phases": args.phases,
        "seconds": round(seconds, 1),
        "cases_run": sum(v1.values()),
        "responses_by_status": dict(sorted(by_status.items())),
        "requests_by_operation": dict(sorted(by_operation.items())),
        "server_errors_5xx": sum(server_errors.values()),
        "server_error_operations": server_errors,
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        json.dumps(
            {k: result[k] for k in ("cases_run", "responses_by_status", "server_errors_5xx", "seconds")}, indent=2
        )
    )
    print(f"wrote {args.out}; schemathesis output and server log in {work}")
    return 1 if result["server_errors_5xx"] else 0


if __name__ == "__main__":
    sys.exit(main())
