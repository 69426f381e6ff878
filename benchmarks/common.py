"""What the CIFAR benchmarks share: the --data argument and loading the archive."""
from __future__ import annotations

import sys

DATA_HELP = "folder or .npz (default: $KERASCOMP_DATA, ../shared/data)"


def load_cifar(data_argument: str | None) -> dict | None:
    """The CIFAR-10 arrays, or ``None`` (with a message on stderr) when the archive is not found."""
    from kerascomp.data import find_data, load_npz

    path = find_data(data_argument)
    if path is None:
        print("CIFAR-10 not found: pass --data or set KERASCOMP_DATA", file=sys.stderr)
        return None
    return load_npz(path)
