"""Tables, the claims check and the plot for ``benchmarks/RESULTS.md``, from ``results/cifar_*.json``.

    python -m benchmarks.cifar --report

Only the block between the ``<!-- generated:begin -->`` and ``<!-- generated:end -->`` markers of
RESULTS.md is rewritten; the discussion around it is written by hand.
"""
from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
REPORT = HERE / "RESULTS.md"
PLOT = RESULTS / "cifar_accuracy_vs_macs.png"
BEGIN, END = "<!-- generated:begin -->", "<!-- generated:end -->"
PEERS = ("l1", "tfmot", "mct", "mct_simd1")
MACS_SLACK = 0.02  # a row counts as at a MACs target when it keeps at most this much more
OURS = ("fga", "correlation", "svd", "joint_svd", "tucker", "collaborative")
ORDER = ("none",) + OURS + PEERS
# Ablation rows of the shared steps, by the full-recipe row they are read against (benchmarks/cifar.py VARIANTS).
ABLATIONS = {"fga": {"fga_no_reconstruct": "without reconstruction", "fga_no_distill": "without distillation",
                     "fga_neither": "without both"}}


def _base(row: dict) -> str:
    """The method a row stands for in the claims: ``fga_params`` is fga at a params budget; ablations and
    other variants stand for nothing (they are read in their own table)."""
    method = row["method"]
    if method.endswith("_params") and method[: -len("_params")] in ORDER:
        return method[: -len("_params")]
    return method


def _rows(state: dict) -> list[dict]:
    rows = list(state["rows"].values())
    return sorted(rows, key=lambda r: (-r["target"], r["target_kind"] != "macs",
                                       ORDER.index(_base(r)) if _base(r) in ORDER else 99, r["method"]))


def _reference(state: dict) -> tuple[float | None, float | None]:
    """(the shipped baseline's top-1, the finetuned control's top-1 or None)."""
    rows = list(state["rows"].values())
    baseline = rows[0]["baseline"]["accuracy"] if rows else None
    control = state["rows"].get("none@1", {}).get("accuracy_after_finetune")
    return baseline, control


def _drop_reference(state: dict) -> float | None:
    """Drops are read against the better of the baseline and the finetuned control (the stricter)."""
    baseline, control = _reference(state)
    return max(x for x in (baseline, control) if x is not None) if baseline is not None else None


def model_table(state: dict) -> str:
    setup = state["setup"]
    baseline, control = _reference(state)
    reference = _drop_reference(state)
    recipe = (f", distilled from the baseline (alpha {setup['alpha']}, temperature {setup['temperature']})"
              if setup.get("alpha") else ", plain cross-entropy (no distillation)")
    epochs = f"{setup['epochs']} finetune epoch" + ("" if setup["epochs"] == 1 else "s")
    lines = [f"### {setup['model']}: {epochs} on {setup['train_samples']} images, "
             f"SGD lr {setup['lr']}{recipe}; {setup.get('calibration', 256)} training images as `data`", ""]
    if baseline is not None:
        lines.append(f"Baseline top-1 {baseline:.4f}" + (f"; the baseline finetuned with the same budget "
                                                          f"(`none`) {control:.4f}" if control is not None else "")
                     + f". Change = top-1 after finetuning minus {reference:.4f} (the better of the two).")
        lines.append("")
    lines.append("| method | target | top-1 before ft | top-1 after ft | change | MACs kept | params kept | "
                 "tflite KiB fp32 / int8 | latency fp32 | latency int8 (int8 top-1 agreement with Keras, 2,000 test images) | "
                 "realised fp32 / int8 | compress s |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in _rows(state):
        target = "-" if r["method"] == "none" else f"{r['target']:g} {r['target_kind']}"
        if r.get("status") != "ok":
            lines.append(f"| {r['method']} | {target} | {r.get('status')}: {r.get('error', '?').splitlines()[0][:160]} "
                         "|  |  |  |  |  |  |  |  |  |")
            continue
        params = f"{r['params_ratio']:.3f}"
        if "nonzero_kernel_fraction" in r:
            params += f" ({r['nonzero_kernel_fraction']:.3f} non-zero)"
        lines.append(
            f"| {r['method']} | {target} | {r['accuracy_before_finetune']:.4f} | {r['accuracy_after_finetune']:.4f} | "
            f"{r['accuracy_after_finetune'] - reference:+.4f} | {r['macs_ratio']:.3f} | {params} | "
            f"{r['tflite_bytes_fp32'] / 1024:.0f} / {r['tflite_bytes_int8'] / 1024:.0f} | "
            f"{r['latency_ratio_fp32']:.3f} | {_int8(r)} | "
            f"{r['realised_fraction_fp32']:.2f} / {r['realised_fraction_int8']:.2f} | {r['compress_seconds']:.1f} |")
    lines += ["", "Commands (each row also stores its own in the JSON): "
              f"`python -m benchmarks.cifar --model {setup['model']} --epochs {setup['epochs']} "
              f"--train-samples {setup['train_samples']} --lr {setup['lr']}"
              + (f" --alpha {setup['alpha']} --temperature {setup['temperature']}" if setup.get("alpha") else "")
              + (f" --calibration {setup['calibration']}" if setup.get("calibration") else "")
              + (f" --out {state['out']}" if state.get("out") else "")
              + (f" --data {setup['data']}" if setup.get("data") else "") + " --methods ... --targets ...`."]
    return "\n".join(lines)


def ablation_table(state: dict) -> str:
    """What each shared step adds: the full-recipe row against its ablations at the same target."""
    reference, rows = _drop_reference(state), state["rows"]
    lines = []
    for full, variants in ABLATIONS.items():
        for row in rows.values():
            if row["method"] != full or row.get("status") != "ok" or row["target_kind"] != "macs":
                continue
            found = [(label, rows.get(f"{name}@{row['target']:g}")) for name, label in variants.items()]
            found = [(label, r) for label, r in found if r and r.get("status") == "ok"]
            if not found:
                continue
            if not lines:
                lines += ["| row | target | top-1 before ft | top-1 after ft | change | what the step adds |",
                          "|---|---|---|---|---|---|"]
            lines.append(f"| {full} (full recipe) | {row['target']:g} macs | {row['accuracy_before_finetune']:.4f} | "
                         f"{row['accuracy_after_finetune']:.4f} | {row['accuracy_after_finetune'] - reference:+.4f} | |")
            for label, r in found:
                gain = 100 * (row["accuracy_after_finetune"] - r["accuracy_after_finetune"])
                lines.append(f"| {r['method']} ({label}) | {r['target']:g} macs | {r['accuracy_before_finetune']:.4f} | "
                             f"{r['accuracy_after_finetune']:.4f} | {r['accuracy_after_finetune'] - reference:+.4f} | "
                             f"{gain:+.2f} pt after finetuning |")
    return "\n".join(lines)


def _int8(row: dict) -> str:
    """The int8 latency ratio with its parity: top-1 agreement of the int8 .tflite with the Keras model
    (rows from before 2026-12 recorded none, and say so)."""
    parity = row.get("parity_int8")
    if parity is None:
        return f"{row['latency_ratio_int8']:.3f} (parity not recorded)"
    flag = "" if parity["top1_agreement"] >= 0.98 else " **FAILS ≥ 0.98**"
    return f"{row['latency_ratio_int8']:.3f} (agrees {parity['top1_agreement']:.3f}{flag})"


def claims(state: dict) -> list[str]:
    """The issue's four targets, checked on one model's rows; each line says met / not met and the evidence."""
    reference = _drop_reference(state)
    ok = [r for r in state["rows"].values() if r.get("status") == "ok" and r["method"] != "none"]
    if reference is None or not ok:
        return []

    def change(r):
        return r["accuracy_after_finetune"] - reference

    ours = [r for r in ok if _base(r) in OURS]
    out = []
    # the accuracy issue's targets (2026-12): at 0.5 MACs within 0.5 pt of the control, at 0.25 within 2.0
    for budget, allowed in ((0.5, 0.005), (0.25, 0.02)):
        rows = [r for r in ours if r["target_kind"] == "macs" and r["macs_ratio"] <= budget + 1e-9]
        best = max(rows, key=change, default=None)
        out.append(_claim(f"≤ {100 * allowed:.1f} pt below the reference at {budget:g} MACs",
                          best is not None and change(best) >= -allowed - 1e-12,
                          best and f"best: {best['method']} at {best['macs_ratio']:.3f} MACs, "
                                   f"{100 * change(best):+.2f} pt"))
    params = [r for r in ok if r["target_kind"] == "params" and abs(r["target"] - 0.5) < 1e-9]
    mine = [r for r in params if _base(r) in OURS]
    for peer in ("mct", "mct_simd1", "l1"):
        theirs = [r for r in params if _base(r) == peer]
        if mine and theirs:
            a, b = max(mine, key=change), theirs[0]
            gap = 100 * (a["accuracy_after_finetune"] - b["accuracy_after_finetune"])
            out.append(_claim(f"≥ 2 pt above {peer} at 0.5 params", gap >= 2.0,
                              f"{a['method']} {a['accuracy_after_finetune']:.4f} vs {peer} "
                              f"{b['accuracy_after_finetune']:.4f}: {gap:+.2f} pt"))
    for target in sorted({r["target"] for r in ok}, reverse=True):
        mine = [r for r in ours if r["target"] == target and r["target_kind"] == "macs"]
        named = [r for r in ok if r["target"] == target and r["target_kind"] == "macs" and _base(r) in PEERS]
        # a peer that keeps more MACs than asked (tfmot's masks keep them all) is not at this budget
        peers = [r for r in named if r["macs_ratio"] <= target + MACS_SLACK]
        over = "".join(f"; not counted: {r['method']} {r['accuracy_after_finetune']:.4f}, which keeps "
                       f"{r['macs_ratio']:.3f} of the MACs" for r in named if r not in peers)
        if mine and peers:
            a, b = max(mine, key=change), max(peers, key=change)
            gap = 100 * (a["accuracy_after_finetune"] - b["accuracy_after_finetune"])
            out.append(_claim(f"≥ 1 pt ahead of the best peer at {target:g} MACs", gap >= 1.0,
                              f"{a['method']} {a['accuracy_after_finetune']:.4f} vs {b['method']} "
                              f"{b['accuracy_after_finetune']:.4f}: {gap:+.2f} pt{over}"))
    realised = [(r["realised_fraction_fp32"], r) for r in ours if r["target_kind"] == "macs"]
    if realised:
        worst = min(realised, key=lambda p: p[0])
        good = sum(p[0] >= 0.9 for p in realised)
        out.append(_claim("realised speed-up ≥ 0.9 of ideal (fp32)", good == len(realised),
                          f"{good} of {len(realised)} rows; worst {worst[1]['method']}@{worst[1]['target']:g} "
                          f"{worst[0]:.2f}"))
    return out


def _claim(text: str, met: bool, evidence: str | None) -> str:
    return f"| {text} | {'met' if met else 'not met'} | {evidence or 'no row'} |"


def plot(states: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(states), figsize=(6.5 * len(states), 4.8), squeeze=False)
    for axis, state in zip(axes[0], states):
        rows = [r for r in state["rows"].values() if r.get("status") == "ok"]
        baseline, control = _reference(state)
        for method in ORDER[1:]:
            points = sorted((r["macs_ratio"], r["accuracy_after_finetune"]) for r in rows if r["method"] == method)
            if points:
                style = "--" if method in PEERS else "-"
                axis.plot(*zip(*points), style, marker="o", label=method)
        if baseline is not None:
            axis.axhline(baseline, color="black", lw=0.8, label="baseline")
        if control is not None:
            axis.axhline(control, color="grey", lw=0.8, ls=":", label="baseline, same finetune")
        axis.set(title=f"CIFAR-10 {state['setup']['model']} (JPEG-degraded copy)", xlabel="MACs kept (fraction)",
                 ylabel="top-1 after finetuning")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# rows measured on the undertrained baselines of before 2026-12 (ResNet-20 trained 4 epochs to 73.1%,
# ResNet-56 2 epochs to 55.9%), kept for the record under their own heading, never mixed with new rows
ARCHIVED = ("cifar_resnet20.json", "cifar_resnet56.json")
# grids with a hand-written section of their own in RESULTS.md (which links their .md), left out of the generated part
SEPARATE = ("cifar_resnet20_auto.json",)


def write_report() -> None:
    found = [(p, json.loads(p.read_text())) for p in sorted(RESULTS.glob("cifar_resnet*.json"))]
    found = [(p, s) for p, s in found if s.get("rows") and s.get("setup", {}).get("model") and p.name not in SEPARATE]
    current = [(p, s) for p, s in found if p.name not in ARCHIVED]
    archived = [(p, s) for p, s in found if p.name in ARCHIVED]
    blocks = []
    if current:
        plot([s for _, s in current], PLOT)
        blocks.append(f"![top-1 vs MACs kept]({PLOT.relative_to(HERE).as_posix()})\n")
    for path, state in current:
        blocks.append(_block(path, state, checks=True))
    if archived:
        blocks.append("## Archive: rows on the undertrained baselines (before 2026-12)\n\n"
                      "ResNet-20 trained 4 epochs (73.1%), ResNet-56 2 epochs (55.9%), 256 calibration images, "
                      "plain finetuning without distillation, and code from before reconstruction, BN weighting "
                      "and the 2026-12 method fixes. They say nothing about a trained model; kept for the record.\n")
        for path, state in archived:
            blocks.append(_block(path, state, checks=False))
    generated = "\n".join(blocks)
    text = REPORT.read_text() if REPORT.exists() else f"# CIFAR-10 results\n\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    REPORT.write_text(f"{head}{BEGIN}\n{generated}\n{END}{tail}")


def _block(path: Path, state: dict, checks: bool) -> str:
    name = path.relative_to(HERE).as_posix()
    text = model_table(state) + f"\n\nData: [`{name}`]({name}).\n"
    ablations = ablation_table(state) if checks else ""
    if ablations:
        text += f"\nAblations of the shared steps ({state['setup']['model']}):\n\n{ablations}\n"
    found = claims(state) if checks else []
    if found:
        text += (f"\nTargets on {state['setup']['model']}:\n\n| target | result | evidence |\n|---|---|---|\n"
                 + "\n".join(found) + "\n")
    return text
