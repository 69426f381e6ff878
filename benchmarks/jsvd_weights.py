"""Joint vs per-layer SVD before any training: the weight error of every automatic joint group at matched params.

    python -m benchmarks.jsvd_weights [--model benchmarks/models/resnet56_cifar10.keras]
    # writes benchmarks/results/jsvd_weights_<model name>.{json,md}

For each group of repeated convs that ``method="joint_svd"`` finds, and per-layer SVD ranks 2, 4, 8
and 16, the relative squared Frobenius error of per-layer SVD and of the left, right and bi joint
variants at the rank whose params match. It says, without finetuning, whether a model's repeated
convs share a subspace (the condition under which joint SVD can win). The finetuned comparison is
``python -m benchmarks.cifar --preset jsvd``.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

from benchmarks.common import result_file
from kerascomp.decompose import jsvd
from kerascomp.graph.keras_io import infer_shapes, read_model
from kerascomp.loading import load_demo_model, load_model
from kerascomp.methods.joint_svd import SVDOptions, svd_units
from kerascomp.tables import table

RESULTS = Path(__file__).resolve().parent / "results"


def weight_errors(model, svd_ranks=(2, 4, 8, 16)) -> list[dict]:
    """Relative squared weight error of every automatic joint group at matched params, per variant."""
    graph = read_model(model)
    units, _ = svd_units(graph, infer_shapes(graph), "joint_svd", SVDOptions())
    rows = []
    for unit in units:
        if len(unit.members) < 2:
            continue
        matrices = [jsvd.spatial_matrix(m.spec.weights[0]) for m in unit.members]
        total = sum(float((m ** 2).sum()) for m in matrices)
        for svd_rank in svd_ranks:
            row = {"group": f"{unit.members[0].spec.name} +{len(matrices) - 1}", "n": len(matrices),
                   "svd_rank": svd_rank, "svd": float(jsvd.error_curve(matrices, "svd")[svd_rank])}
            for variant in ("left", "right", "bi"):
                rank = jsvd.matched_rank(unit.shape, len(matrices), svd_rank, variant)
                if variant == "bi":
                    row[variant] = jsvd.bi_joint(matrices, *jsvd.split_bi_rank(rank)).errors[-1] / total
                else:
                    row[variant] = float(jsvd.error_curve(matrices, variant)[rank])
            rows.append(row)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help=".keras model (default: the shipped ResNet-20)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    model = load_model(args.model) if args.model else load_demo_model()
    rows = weight_errors(model)
    out = Path(args.out) if args.out else RESULTS / f"jsvd_weights_{model.name}"
    command = "python -m benchmarks.jsvd_weights " + " ".join(sys.argv[1:] if argv is None else argv)
    out.parent.mkdir(parents=True, exist_ok=True)
    result_file(out, ".json").write_text(json.dumps({"command": command, "model": model.name,
                                                    "machine": platform.platform(), "rows": rows}, indent=2))
    body = table(["group", "convs", "svd rank", "svd", "left", "right", "bi"],
                 [[r["group"], str(r["n"]), str(r["svd_rank"]), f"{r['svd']:.3f}", f"{r['left']:.3f}",
                   f"{r['right']:.3f}", f"{r['bi']:.3f}"] for r in rows], markdown=True)
    result_file(out, ".md").write_text(f"Relative squared weight error at matched params, {model.name}, before any "
                                      f"training.\n\n{body}\n\nMade with `{command}`.\n")
    print(body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
