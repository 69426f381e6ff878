"""Fuzz every method on random CNN graphs and count the failures: the figure we track.

    python -m benchmarks.fuzz --graphs 1000 --resume
    TF_USE_LEGACY_KERAS=1 python -m benchmarks.fuzz --graphs 1000 --resume --out benchmarks/results/fuzz_tf_keras
    # writes benchmarks/results/fuzz.{json,md}

Each graph is drawn by ``kerascomp.testing.draw_recipe`` (conv, grouped, dilated, strided, depthwise and
separable convs, BN, residual Add, Concatenate, pooling, Dense on feature maps, Dense or no head; Sequential or functional)
and checked by ``kerascomp.testing.check_graph``: the IR round trip and the lossless rewrite of every
method, then one method (cycling through ``--methods``; ``--all-methods`` for each) compressed to
``--target`` of the MACs, fitted one step, exported and compared with LiteRT. A refusal with a
kerascomp error counts as a refusal; any other exception or a broken property is a failure.
The results files are rewritten after every graph, so an interrupted run keeps what it did, and
``--resume`` continues it (the same seed, generator, methods, target and flavour; the graphs already checked are
drawn again and skipped, so graph i is the same graph in one run or in several).
"""
from __future__ import annotations

import argparse
import os
import platform
import time
from collections import Counter
from pathlib import Path

from benchmarks.common import command_line, result_file, write_results

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--graphs", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--methods", default=None, help="comma-separated (default: every registered method)")
    parser.add_argument("--all-methods", action="store_true", help="compress each graph with every method")
    parser.add_argument("--target", type=float, default=0.5, help="fraction of the MACs to keep")
    parser.add_argument("--export", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--out", default=str(RESULTS / "fuzz"))
    parser.add_argument("--resume", action="store_true", help="continue the run recorded in --out")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    import numpy as np

    from kerascomp.api import METHODS
    from kerascomp.graph.flavour import default_keras, legacy_requested
    from kerascomp.testing import GENERATOR_VERSION, build_model, check_graph, draw_recipe, numpy_chooser

    keras = default_keras()
    methods = args.methods.split(",") if args.methods else list(METHODS)
    rng = np.random.default_rng(args.seed)
    run = {"seed": args.seed, "generator": GENERATOR_VERSION, "methods": methods, "all_methods": args.all_methods,
           "export": args.export,
           "flavour": "tf_keras" if legacy_requested() else f"keras {keras.__version__}",
           "target_flops": args.target}
    record = {"command": command_line("benchmarks.fuzz"), "machine": platform.platform(), **run,
              "graphs": 0, "seconds": 0.0, "checks": [], "failures": []}
    if args.resume and result_file(Path(args.out), ".json").exists():
        record = _resumed(result_file(Path(args.out), ".json"), run, record["command"])
    done, spent = record["graphs"], record["seconds"]
    started = time.perf_counter()
    for index in range(args.graphs):
        recipe = draw_recipe(numpy_chooser(rng))
        if index < done:  # drawn again so that the graphs after it are the ones a single run draws
            continue
        try:
            model = build_model(recipe, keras)
        except Exception as error:  # noqa: BLE001 - a recipe Keras rejects is a generator bug
            record["failures"].append({"graph": index, "method": None, "stage": "build", "recipe": str(recipe),
                                       "detail": repr(error)})
            continue
        chosen = methods if args.all_methods else [methods[index % len(methods)]]
        for method in methods:
            target = args.target if method in chosen else None
            for outcome in check_graph(model, method, target, export=args.export):
                check = {"graph": index, "method": method, "stage": outcome.stage, "status": outcome.status,
                         **outcome.measures}
                if outcome.status == "refused":  # the kerascomp error, so that no refusal goes unexplained
                    check["reason"] = outcome.detail.splitlines()[0][:500]
                record["checks"].append(check)
                if outcome.status == "failed":
                    record["failures"].append({**check, "recipe": str(recipe), "detail": outcome.detail})
        record["graphs"] = index + 1
        record["seconds"] = round(spent + time.perf_counter() - started, 1)
        write_results(args.out, record, markdown(record))
        print(f"graph {index + 1}/{args.graphs}: {len(record['failures'])} failure(s) so far", flush=True)
    return 1 if record["failures"] else 0


def _resumed(path: Path, run: dict, command: str) -> dict:
    """The recorded run at ``path``, if it was made with the same settings as this one."""
    import json

    record = json.loads(path.read_text())
    differs = {key: (record.get(key), value) for key, value in run.items() if record.get(key) != value}
    if differs:
        listed = ", ".join(f"{key}: recorded {old!r}, now {new!r}" for key, (old, new) in differs.items())
        raise SystemExit(f"--resume: {path} was made with other settings ({listed}); pass the same options or "
                         "another --out")
    record["command"] = command
    return record


def markdown(record: dict) -> str:
    from kerascomp.tables import table

    counts = Counter((c["method"], "lossless" if c["stage"] in ("round trip", "lossless") else "target", c["status"])
                     for c in record["checks"])
    methods = sorted({c["method"] for c in record["checks"]})
    rewrote = Counter(c["method"] for c in record["checks"] if c.get("rewritten_layers", 0) > 0)
    referenced = Counter(c["method"] for c in record["checks"] if "reference_error" in c)
    rows = []
    for method in methods:
        row = [method]
        for stage in ("lossless", "target"):
            row += [counts[(method, stage, status)] for status in ("ok", "refused", "failed")]
        measured = sum(1 for c in record["checks"] if c["method"] == method and "rewritten_layers" in c)
        row.insert(2, f"{rewrote[method]} of {measured}" if measured else "not recorded")
        row.append(referenced[method])
        rows.append(row)
    headers = ["method", "lossless ok", "lossless ok that rewrote >= 1 layer", "lossless refused", "lossless failed",
               "target ok", "target refused", "target failed", "target checked against an independent reference"]
    failures = "\n".join(f"- graph {f['graph']}, {f['method']}, {f['stage']}: `{f['detail'].splitlines()[0][:300]}`"
                         f"\n  recipe: `{f['recipe']}`" for f in record["failures"]) or "None."
    return (f"# Fuzzed graphs ({record['flavour']})\n\nCommand: `{record['command']}`\n\n"
            f"{record['graphs']} random graphs in {record.get('seconds', 0)} s; target {record['target_flops']} "
            f"of the MACs. **Failures: {len(record['failures'])}.**\n\n{table(headers, rows, markdown=True)}\n\n"
            f"## Failures\n\n{failures}\n\n## Refusals\n\n{refusals(record)}\n")


def refusals(record: dict) -> str:
    """The refused checks by method, stage and error type, each with one message as an example (records
    from before 2026-12-07 kept no reason)."""
    found: dict = {}
    for check in record["checks"]:
        if check["status"] == "refused":
            reason = check.get("reason", "not recorded")
            key = (check["method"], check["stage"], reason.split(":", 1)[0])
            found.setdefault(key, []).append(reason)
    if not found:
        return "None."
    return "\n".join(f"- {method}, {stage}, {kind}: {len(reasons)}"
                     + ("" if kind == "not recorded" else f", e.g. `{reasons[0][:300]}`")
                     for (method, stage, kind), reasons in sorted(found.items()))


if __name__ == "__main__":
    raise SystemExit(main())
