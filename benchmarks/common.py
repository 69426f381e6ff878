"""What the CIFAR benchmarks share: the --data argument and loading the archive."""
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


def write_results(out, record: dict, markdown: str) -> None:
    """``out``.json (the record) and ``out``.md (the Markdown text), written whole each time."""
    import json
    from pathlib import Path

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(record, indent=2, default=str))
    out.with_suffix(".md").write_text(markdown)
