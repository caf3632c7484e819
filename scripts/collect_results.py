"""Collect finished runs into a table next to the paper's numbers.

    python scripts/collect_results.py runs/cifar runs/imagenet --json results/table.json

Every directory below the given roots that holds `results.json` (written by the trainer at the
last step; no checkpoint selection) and `config.json` is one row. The paper row is found from the
model name and its variant fields (`krause.paper.row_name`); "same arch." says whether the run's
parameter count equals the paper's, i.e. whether it is the paper's model rather than a reduced
one (quick start, smoke runs, reduced-scale reproductions).
"""

from __future__ import annotations

import argparse
import json
import pathlib

from krause.paper import ACC, PAPER, row_name


def collect(roots: list[str]) -> list[dict]:
    rows = []
    for root in roots:
        for results_file in sorted(pathlib.Path(root).expanduser().rglob("results.json")):
            run = results_file.parent
            config_file = run / "config.json"
            if not config_file.exists():
                continue
            config = json.loads(config_file.read_text())
            results = json.loads(results_file.read_text())
            dataset = config["input"]["dataset"]
            name = row_name(config["model_name"], config.get("model", {}))
            metric, paper, paper_params = PAPER.get((dataset, name), (None, None, None))
            if metric is None:
                metric = ACC if ACC in results else "test/bpd"
            value = results.get(metric)
            scale = 100.0 if metric == ACC else 1.0
            rows.append(
                dict(
                    run=str(run),
                    dataset=dataset,
                    row=name,
                    metric=metric.split("/")[-1],
                    ours=None if value is None else scale * value,
                    paper=paper,
                    params=results.get("num_params"),
                    same_arch=paper_params is not None
                    and results.get("num_params") == paper_params,
                    steps=results.get("step"),
                )
            )
    return rows


def table(rows: list[dict]) -> str:
    lines = [
        "| run | dataset | row | metric | ours | paper | params | same arch. | steps |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    fmt = lambda x, spec: "–" if x is None else format(x, spec)
    for r in rows:
        digits = ".2f" if r["metric"] == "accuracy" else ".4f"
        lines.append(
            f"| {r['run']} | {r['dataset']} | {r['row']} | {r['metric']} | "
            f"{fmt(r['ours'], digits)} | {fmt(r['paper'], digits)} | {fmt(r['params'], ',')} | "
            f"{'yes' if r['same_arch'] else 'no'} | {r['steps']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("roots", nargs="+", help="directories searched for finished runs")
    parser.add_argument("--json", default="", help="also write the rows here")
    args = parser.parse_args()
    rows = collect(args.roots)
    if not rows:
        raise SystemExit(f"no finished runs (results.json + config.json) under {args.roots}")
    print(table(rows))
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
