"""What the benchmarks share: the --data argument and loading the archive, the results files, random-weight
models made meaningful."""
from __future__ import annotations

import sys
from pathlib import Path

from kerascomp.bench.host import host_cpu as cpu_model  # noqa: F401  (every latency row records it)

DATA_HELP = "folder or .npz (default: $KERASCOMP_DATA, ../shared/data)"


def load_cifar(data_argument: str | None) -> dict | None:
    """The CIFAR-10 arrays, or ``None`` (with a message on stderr) when the archive is not found."""
    from kerascomp.data import find_data, load_npz

    path = find_data(data_argument)
    shared = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10.npz"
    if path is None and shared.is_file():
        path = shared
    if path is None:
        print("CIFAR-10 not found: pass --data or set KERASCOMP_DATA", file=sys.stderr)
        return None
    return load_npz(path)


def command_line(module: str) -> str:
    """The command that reproduces this run, for the results files."""
    return f"python -m {module} " + " ".join(sys.argv[1:])


def result_file(out, extension: str) -> Path:
    """``out`` + ``extension`` (``".json"``, ``".md"``): a results stem may hold dots (``--out cifar_0.25``), which
    ``Path.with_suffix`` would take for a suffix and replace (0.25 and 0.5 both writing ``cifar_0.json``)."""
    out = Path(out)
    if out.suffix in (".json", ".md"):
        out = out.with_suffix("")
    return out.parent / f"{out.name}{extension}"


def write_results(out, record: dict, markdown: str) -> None:
    """``out``.json (the record) and ``out``.md (the Markdown text), written whole each time."""
    import json

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result_file(out, ".json").write_text(json.dumps(record, indent=2, default=str))
    result_file(out, ".md").write_text(markdown)


def calibrated(model, x):
    """A random-weight model with its BatchNorm statistics taken from the images ``x``. At their initial
    statistics the 224x224 applications give near-constant outputs (a random-weight MobileNetV2's logits are
    ~1e-11 and equal for every input), so a parity check on them proves nothing: a joint SVD file 'failed'
    at 5.4e-4 relative error and an FGA file on its spread; with the statistics from the images both pass
    at ~6e-6."""
    from kerascomp.graph.keras_io import read_model, write_model
    from kerascomp.methods.calibrate import recalibrate_batchnorm

    return write_model(recalibrate_batchnorm(read_model(model), x)[0])
