"""The reusable workflow's plan: the fleet's targets as matrices of shards, one per wave job.

    python3 -m deployer.fleet.shards --fleet-file fleet.yml --shards 8 [--github-output FILE]

Up to three wave jobs run one after another (`canary`, `early`, `rest`), each only when the one
before succeeded: the fleet's first wave goes to `canary`, its second to `early`, every later
wave to `rest`. Each job's matrix holds at most `shards` shards (and never more than GitHub's
256 jobs per matrix), each a comma-separated list of target names, in the file's order, sizes
within one of each other.

Wave order holds across shards too: shards of one job run side by side and cannot wait for each
other, so a `rest` that holds several waves is one shard, one job, which runs its waves in order
(a wave starts only when every target of the waves before it succeeded). To shard every wave
job, use at most three waves.

Everything the plan job writes to GITHUB_OUTPUT stays under GitHub's 1 MB limit for a job's
outputs (names are at most 63 characters: 10,000 targets take about 640 kB); a fleet that would
not fit is refused.

Standard library only: the plan job runs it with the runner's python3.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path

from deployer.fleet.spec import Fleet, FleetError, Target, load

MAX_MATRIX_JOBS = 256  # GitHub: a matrix generates at most 256 jobs per workflow run
MAX_OUTPUTS_BYTES = 1024 * 1024  # GitHub: a job's outputs, all together, at most 1 MB
JOBS = ("canary", "early", "rest")


def split(items: Sequence[Target], count: int) -> list[list[Target]]:
    """`items` in `count` contiguous shards (at most one per item), sizes within one."""
    count = max(1, min(count, len(items)))
    size, extra = divmod(len(items), count)
    out, start = [], 0
    for i in range(count):
        end = start + size + (1 if i < extra else 0)
        out.append(list(items[start:end]))
        start = end
    return [s for s in out if s]


def plan(fleet: Fleet, shards: int) -> dict[str, dict[str, object]]:
    """wave job → {"matrix": {"include": [{"shard": "canary-1", "targets": "a,b"}]},
    "count": N targets, "waves": [...]}; a wave job without targets has an empty include."""
    shards = max(1, min(shards, MAX_MATRIX_JOBS))
    waves = fleet.waves
    groups: dict[str, list[Target]] = {job: [] for job in JOBS}
    job_waves: dict[str, list[int]] = {job: [] for job in JOBS}
    for rank, wave in enumerate(waves):
        job = JOBS[min(rank, len(JOBS) - 1)]
        job_waves[job].append(wave)
    for target in fleet.targets:
        rank = waves.index(target.wave)
        groups[JOBS[min(rank, len(JOBS) - 1)]].append(target)
    out: dict[str, dict[str, object]] = {}
    for job in JOBS:
        # Several waves in one job: one shard, which runs them in order (shards cannot wait for
        # each other's waves).
        count = shards if len(job_waves[job]) <= 1 else 1
        include = [
            {"shard": f"{job}-{i}", "targets": ",".join(t.name for t in shard)}
            for i, shard in enumerate(split(groups[job], count), start=1)
        ]
        out[job] = {
            "matrix": {"include": include},
            "count": len(groups[job]),
            "waves": job_waves[job],
        }
    return out


def outputs(fleet: Fleet, shards: int) -> dict[str, str]:
    """The plan job's outputs: `<job>-matrix` (JSON) and `<job>-count` for each wave job, and
    `targets-total`. Raises FleetError when they would not fit GitHub's limits."""
    planned = plan(fleet, shards)
    values: dict[str, str] = {"targets-total": str(len(fleet.targets))}
    for job, p in planned.items():
        values[f"{job}-matrix"] = json.dumps(p["matrix"], separators=(",", ":"))
        values[f"{job}-count"] = str(p["count"])
    size = sum(len(k) + len(v.encode()) for k, v in values.items())
    if size >= MAX_OUTPUTS_BYTES - 4096:
        raise FleetError(
            f"the plan takes {size:,} bytes, over GitHub's 1 MB limit for a job's outputs: "
            "split the fleet into several fleet files"
        )
    return values


def _write_github_output(path: Path, values: dict[str, str]) -> None:
    with path.open("a", encoding="utf-8", newline="\n") as f:
        for name, value in values.items():
            delimiter = f"ghadelimiter_{uuid.uuid4()}"
            f.write(f"{name}<<{delimiter}\n{value}\n{delimiter}\n")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m deployer.fleet.shards")
    p.add_argument("--fleet-file", required=True)
    p.add_argument("--shards", type=int, default=1)
    p.add_argument("--github-output", default=os.environ.get("GITHUB_OUTPUT", ""))
    args = p.parse_args(argv)
    if not 1 <= args.shards <= MAX_MATRIX_JOBS:
        print(f"db-deploy: invalid shards: from 1 to {MAX_MATRIX_JOBS}", file=sys.stderr)
        return 2
    try:
        fleet = load(Path(args.fleet_file), resolve=False)
        values = outputs(fleet, args.shards)
    except FleetError as exc:
        print(f"db-deploy: {exc}", file=sys.stderr)
        return 2
    if args.github_output:
        _write_github_output(Path(args.github_output), values)
    for job, planned in plan(fleet, args.shards).items():
        count = planned["count"]
        matrix = planned["matrix"]
        waves = planned["waves"]
        assert isinstance(matrix, dict) and isinstance(waves, list)
        line = f"{job}: {count} target(s) in {len(matrix['include'])} shard(s)"
        if len(waves) > 1:
            line += f", waves {', '.join(map(str, waves))} in order inside one job"
        print(line)
        if len(waves) > 1 and args.shards > 1:
            print(
                f"::notice title=Fleet plan::{job} holds waves {', '.join(map(str, waves))}: "
                "they run in order inside one job, unsharded (shards cannot wait for each "
                "other's waves); use at most three waves to shard every wave job"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
