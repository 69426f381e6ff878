"""A fingerprint of what every method does, to show a refactor changed nothing (or what it changed).

    KERASCOMP_DATA=../shared/data python -m benchmarks.behaviour_fingerprint --out /tmp/after.json
    git worktree add /tmp/before <ref> && (cd /tmp/before && PYTHONPATH=. python -m benchmarks.behaviour_fingerprint \\
        --out /tmp/before.json)     # a ref that has this script; else copy it there
    python -m benchmarks.behaviour_fingerprint --compare /tmp/before.json /tmp/after.json

Compresses the shipped ResNet-20 with 256 CIFAR-10 training images (labelled for collaborative) in 14
cases covering the seven methods (MACs and params targets, global allocation, pointwise, Bi-JSVD,
prune-only), and records per case the sha256 of the compressed weights, the report's totals and every
per-layer row (action, costs, error, reason). Float results depend on the CPU and library versions:
compare two fingerprints made on the same machine.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import warnings

import numpy as np

from benchmarks.common import DATA_HELP, load_cifar

CASES = [("fga", {"target_flops": 0.5}), ("fga", {"target_params": 0.4}),
         ("fga", {"target_flops": 0.3, "pointwise": True}), ("l1", {"target_flops": 0.5}),
         ("l1", {"target_flops": 0.5, "allocation": "global"}), ("correlation", {"target_flops": 0.5}),
         ("svd", {"target_flops": 0.5}), ("svd", {"target_params": 0.3, "allocation": "global"}),
         ("joint_svd", {"target_params": 0.5}), ("joint_svd", {"target_params": 0.3, "variant": "bi"}),
         ("tucker", {"target_flops": 0.5}), ("tucker", {"target_flops": 0.4, "allocation": "global"}),
         ("collaborative", {"target_flops": 0.5}),
         ("collaborative", {"target_params": 0.4, "decompose": False})]


def fingerprint(data_argument: str | None) -> dict:
    import kerascomp

    try:
        from kerascomp.loading import load_demo_model
    except ImportError:  # versions before kerascomp.loading
        from kerascomp.cli import load_demo_model

    data = load_cifar(data_argument)
    if data is None:
        raise SystemExit(2)
    x, y = data["x_train"][:256].astype("float32"), data["y_train"][:256].ravel()
    model = load_demo_model()
    out = {}
    for method, targets in CASES:
        options = dict(targets, target_flops=None) if "target_params" in targets else dict(targets)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = kerascomp.compress(model, method, data=(x, y) if method == "collaborative" else x, verbose=0,
                                        **options)
        digest = hashlib.sha256()
        for weight in result.model.get_weights():
            digest.update(np.ascontiguousarray(weight).tobytes())
        report = result.report
        key = f"{method} {json.dumps(targets, sort_keys=True)}"
        out[key] = {"weights_sha256": digest.hexdigest(),
                    "totals": [report.macs_before, report.macs_after, report.params_before, report.params_after],
                    "rows": [[r.layer, r.action, r.macs_before, r.macs_after, r.params_before, r.params_after,
                              r.relative_error, r.reason] for r in report.layers]}
        print(key, out[key]["weights_sha256"][:16], out[key]["totals"], flush=True)
    return out


def compare(before: dict, after: dict) -> int:
    changed = 0
    for key in before:
        if key not in after:
            print(f"{key}: missing in the second file")
            changed += 1
            continue
        same = {part: before[key][part] == after[key][part] for part in ("weights_sha256", "totals", "rows")}
        print(("same  " if all(same.values()) else "DIFFER") + f" {key} " +
              ", ".join(f"{part} {'=' if ok else '!='}" for part, ok in same.items()))
        if not same["rows"]:
            for old, new in zip(before[key]["rows"], after[key]["rows"]):
                if old != new:
                    print(f"    {old}\n    {new}")
        changed += not all(same.values())
    return 1 if changed else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=None, help=DATA_HELP)
    parser.add_argument("--out", help="fingerprint JSON to write")
    parser.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"), help="compare two fingerprint files")
    args = parser.parse_args(argv)
    if args.compare:
        with open(args.compare[0]) as first, open(args.compare[1]) as second:
            return compare(json.load(first), json.load(second))
    if not args.out:
        parser.error("pass --out FILE (or --compare BEFORE AFTER)")
    result = fingerprint(args.data)
    with open(args.out, "w") as handle:
        json.dump(result, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
