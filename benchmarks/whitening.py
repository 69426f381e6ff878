"""The factoring methods with and without whitening (``whiten``), on a trained CIFAR model, before finetuning.

    python -m benchmarks.whitening
    # writes benchmarks/results/whitening.{json,md}

For each of ``--methods`` (default auto, svd, tucker) and ``--targets`` fraction of MACs:
``kerascomp.compress(model, method=m, target_flops=t, data=...)`` with ``whiten`` on and off, each
with ``reconstruct`` on and off (BatchNormalization recalibration on, as by default), then top-1 on
the first ``--test-samples`` test images. No latency table (forms and ranks are chosen by MACs), so
the two rows of a pair differ only in the error estimate and the factors: what whitening buys
before finetuning. One run per row; the compression is
deterministic given the data, but a finetune may close or widen a gap (see RESULTS.md).
"""
from __future__ import annotations

import argparse
import sys
import time

from benchmarks.common import DATA_HELP, command_line, load_cifar, write_results

MODELS = ("resnet20", "resnet56")  # the trained baselines of benchmarks/cifar.py


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=None, help=DATA_HELP)
    parser.add_argument("--model", default="resnet20", choices=MODELS)
    parser.add_argument("--methods", default="auto,svd,tucker")
    parser.add_argument("--targets", default="0.5")
    parser.add_argument("--calibration", type=int, default=2000, help="training images passed as data")
    parser.add_argument("--test-samples", type=int, default=5000)
    parser.add_argument("--out", default="benchmarks/results/whitening")
    args = parser.parse_args(argv)
    data = load_cifar(args.data)
    if data is None:
        return 1
    import numpy as np

    import kerascomp
    from benchmarks.cifar import load_baseline

    model = load_baseline(args.model)
    calibration = data["x_train"][:args.calibration].astype("float32")
    x_test = data["x_test"][:args.test_samples].astype("float32")
    y_test = data["y_test"][:args.test_samples].ravel()

    def top1(m) -> float:
        return float(np.mean(np.argmax(m.predict(x_test, batch_size=256, verbose=0), -1) == y_test))

    rows = []
    baseline = top1(model)
    for method in args.methods.split(","):
        for target in [float(t) for t in args.targets.split(",")]:
            for whiten, reconstruct in [(w, r) for r in (True, False) for w in (True, False)]:
                start = time.perf_counter()
                result = kerascomp.compress(model, method=method, target_flops=target, data=calibration,
                                            whiten=whiten, reconstruct=reconstruct, verbose=0)
                rows.append({"method": method, "target_flops": target, "whiten": whiten, "reconstruct": reconstruct,
                             "top1": top1(result.model), "macs_ratio": round(result.report.macs_ratio, 4),
                             "forms": result.report.notes.get("forms", ""),
                             "compress_seconds": round(time.perf_counter() - start, 1)})
                print(rows[-1], flush=True)
    record = {"command": command_line("benchmarks.whitening"), "model": args.model, "baseline_top1": baseline,
              "test_samples": args.test_samples, "calibration": args.calibration,
              "keras": kerascomp._default_keras().__name__, "rows": rows}
    lines = [f"### Whitening on and off: {args.model}, top-1 on {args.test_samples} test images before finetuning "
             f"(baseline {baseline:.4f}); {args.calibration} training images as data; one run per row",
             "", "| method | target MACs | reconstruct | whiten | top-1 | MACs kept | forms (auto) | compress s |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['method']} | {r['target_flops']} | {r['reconstruct']} | {r['whiten']} | {r['top1']:.4f} "
              f"| {r['macs_ratio']:.3f} | {r['forms']} | {r['compress_seconds']} |" for r in rows]
    lines += ["", f"Command: `{record['command']}`", ""]
    write_results(args.out, record, "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
