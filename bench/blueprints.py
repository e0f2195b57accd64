"""The benchmark blueprints, written to a temporary BLUEPRINTS_DIR for each run."""

from __future__ import annotations

from pathlib import Path

LINEAR3 = """\
blueprint: bench_linear3
version: 1
description: start -> one echo task -> end
api_endpoint: jobs/bench_linear3
start: work
states:
  work:
    task: echo
    params: {n: "${ initial_data.n }"}
    on: {success: done}
  done:
    end: finished
    output: {n: "${ steps.work.n }"}
"""

NOOP = """\
blueprint: bench_noop
version: 1
description: start -> set -> end, no worker
api_endpoint: jobs/bench_noop
start: compute
states:
  compute:
    set: {n: "${ initial_data.n }"}
    next: done
  done:
    end: finished
    output: {n: "${ steps.compute.n }"}
"""

FANOUT = """\
blueprint: bench_fanout
version: 1
description: one parallel for_each over initial_data.items (echo each), joined, then end
api_endpoint: jobs/bench_fanout
start: fan
states:
  fan:
    parallel:
      for_each: initial_data.items
      task: echo
      params: {item: "${ item }", index: "${ index }"}
    on: {success: done}
  done:
    end: finished
    output: {count: "${ length(steps.fan) }"}
"""

BLUEPRINTS = {"bench_linear3": LINEAR3, "bench_noop": NOOP, "bench_fanout": FANOUT}
ENDPOINTS = {
    "bench_linear3": "jobs/bench_linear3",
    "bench_noop": "jobs/bench_noop",
    "bench_fanout": "jobs/bench_fanout",
}


def write_blueprints(folder: Path) -> Path:
    """Write every benchmark blueprint into `folder` and return it."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in BLUEPRINTS.items():
        (folder / f"{name}.yaml").write_text(text, encoding="utf-8")
    return folder


def chain(states: int, *, carry: bool = False) -> tuple[str, str]:
    """(name, YAML) of a blueprint of `states` sequential `echo` task states, then end; each
    task's params are the previous one's result (`carry`: its `pad` too, passed on)."""
    name = f"bench_{'carry' if carry else 'chain'}_{states}"
    lines = [
        f"blueprint: {name}",
        "version: 1",
        f"description: {states} sequential echo task states, then end",
        f"api_endpoint: jobs/{name}",
        "start: s1",
        "states:",
    ]
    for i in range(1, states + 1):
        source = "initial_data" if i == 1 else f"steps.s{i - 1}"
        following = f"s{i + 1}" if i < states else "done"
        carried = f', pad: "${{ {source}.pad }}"' if carry else ""
        lines += [
            f"  s{i}:",
            "    task: echo",
            f'    params: {{n: "${{ {source}.n }}"{carried}}}',
            f"    on: {{success: {following}}}",
        ]
    lines += ["  done:", "    end: finished", f'    output: {{n: "${{ steps.s{states}.n }}"}}']
    return name, "\n".join(lines) + "\n"


def write_chains(folder: Path, sizes: list[int], *, carry: bool = False) -> dict[int, str]:
    """Write a chain blueprint per size into `folder`; size -> its endpoint."""
    folder.mkdir(parents=True, exist_ok=True)
    endpoints: dict[int, str] = {}
    for size in sizes:
        name, text = chain(size, carry=carry)
        (folder / f"{name}.yaml").write_text(text, encoding="utf-8")
        endpoints[size] = f"jobs/{name}"
    return endpoints
