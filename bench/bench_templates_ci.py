"""Benchmark: template rendering and the Woodpecker client against the fake server.

Prints figures and ratios; asserts nothing about timings. Run from the repository root:

    .venv/bin/python -m bench.bench_templates_ci [--renders 10] [--calls 300]

* rendering: per built-in template, the median time of ``validate`` alone and of a full
  ``render`` (copier) into a fresh folder, and their ratio (what the 422 check costs);
* Woodpecker: ``get_pipeline`` calls per second through one shared client (kept-alive
  connections) versus a new client per call, and the cost of one retried 503.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.support.fake_woodpecker lives beside the package

from tests.support.fake_woodpecker import FakeWoodpecker  # noqa: E402

from forgeline.adapters.ci.woodpecker import WoodpeckerClient  # noqa: E402
from forgeline.adapters.templates import CopierTemplateProvider  # noqa: E402
from forgeline.domain.secrets import Secret  # noqa: E402


def bench_templates(renders: int) -> None:
    """Median validate and render times per built-in template."""
    provider = CopierTemplateProvider([])
    print(f"== templates ({renders} renders each)")
    print(f"{'template':<16}{'validate ms':>12}{'render ms':>12}{'render/validate':>17}")
    with tempfile.TemporaryDirectory() as tmp:
        for info in provider.list_templates():
            validate_s: list[float] = []
            render_s: list[float] = []
            for i in range(renders):
                start = time.perf_counter()
                provider.validate(info.name, {}, project_name="bench-app")
                validate_s.append(time.perf_counter() - start)
                start = time.perf_counter()
                provider.render(info.name, {}, Path(tmp, f"{info.name}-{i}"), project_name="b")
                render_s.append(time.perf_counter() - start)
            v = statistics.median(validate_s) * 1000
            r = statistics.median(render_s) * 1000
            print(f"{info.name:<16}{v:>12.2f}{r:>12.2f}{r / v:>17.1f}")


async def bench_woodpecker(calls: int) -> None:
    """Requests per second through a shared client and a client per call; one retry."""
    fake = FakeWoodpecker().start()
    try:
        token = Secret(fake.token)
        fake.add_forge_repo("bench/app")
        async with WoodpeckerClient(fake.url, token, backoff_s=0.05) as client:
            repo_id = await client.activate("bench/app")
            number = fake.push(repo_id, "b" * 40)
            start = time.perf_counter()
            for _ in range(calls):
                await client.get_pipeline(repo_id, number)
            shared = calls / (time.perf_counter() - start)

            start = time.perf_counter()
            await client.get_pipeline(repo_id, number)
            clean = time.perf_counter() - start
            fake.fail_next(1, 503)
            start = time.perf_counter()
            await client.get_pipeline(repo_id, number)
            retried = time.perf_counter() - start

        start = time.perf_counter()
        for _ in range(calls):
            async with WoodpeckerClient(fake.url, token) as fresh:
                await fresh.get_pipeline(repo_id, number)
        per_call = calls / (time.perf_counter() - start)
    finally:
        fake.stop()
    print(f"== woodpecker client vs fake server ({calls} GET pipeline calls)")
    print(f"shared client        {shared:>9.0f} req/s")
    print(f"client per call      {per_call:>9.0f} req/s")
    print(f"ratio shared/per-call {shared / per_call:>8.1f}x")
    print(f"one call             {clean * 1000:>9.2f} ms")
    print(f"one call after a 503 {retried * 1000:>9.2f} ms (backoff 0.05 s base, jittered)")


def main() -> None:
    """Parse the options and run both benchmarks."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--renders", type=int, default=10)
    parser.add_argument("--calls", type=int, default=300)
    args = parser.parse_args()
    bench_templates(args.renders)
    asyncio.run(bench_woodpecker(args.calls))


if __name__ == "__main__":
    main()
