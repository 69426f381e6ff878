"""Keep TensorFlow's C++ start-up lines out of the ``kerascomp`` command's output (stdlib only).

TensorFlow's native code logs through absl before ``TF_CPP_MIN_LOG_LEVEL`` is read (``cudart_stub``,
``cpu_feature_guard``, ``cuInit``), so an environment variable alone does not silence it. In the
``kerascomp`` command, TensorFlow is imported and its devices listed while file descriptor 2 points
at a temporary file; afterwards every line that is not one of those start-up lines is written back
to stderr, so nothing else is lost. It does nothing when kerascomp is imported as a library, when
the user set ``TF_CPP_MIN_LOG_LEVEL`` (TensorFlow's import is then left alone) or
``KERASCOMP_NATIVE_LOGS=1``, or passed ``--verbose``.
"""
from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from pathlib import Path

# absl's native format "I0000 00:00:1796175669.026766   10249 cudart_stub.cc:31] ...", its preamble, and
# LiteRT's "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."
_NOISE = re.compile(r"^([IWE]\d{4} \d\d:\d\d:[\d.]+\s+\d+ [\w.]+:\d+\] |WARNING: All log messages before "
                    r"absl::InitializeLog\(\)|To enable the following instructions:|.*oneDNN custom operations|"
                    r"INFO: Created TensorFlow Lite XNNPACK delegate)")


def is_cli_process(argv: list[str] | None = None, orig_argv: list[str] | None = None) -> bool:
    """Whether this process is the ``kerascomp`` command (console script or ``python -m kerascomp[.cli]``)."""
    argv = sys.argv if argv is None else argv
    orig_argv = getattr(sys, "orig_argv", argv) if orig_argv is None else orig_argv
    if argv and Path(argv[0]).name == "kerascomp":
        return True
    if "-m" in orig_argv[:-1]:
        return orig_argv[orig_argv.index("-m") + 1] in ("kerascomp", "kerascomp.cli")
    return False


def startup_noise(line: str) -> bool:
    return bool(_NOISE.match(line))


def quiet_requested() -> bool:
    """Whether the native start-up lines should be filtered: the kerascomp command, unless asked not to."""
    return is_cli_process() and "--verbose" not in sys.argv and os.environ.get("KERASCOMP_NATIVE_LOGS") != "1"


@contextlib.contextmanager
def native_lines_filtered(enabled: bool = True):
    """Point file descriptor 2 at a temporary file; on exit, write back every line that is not start-up noise.

    Python's own stderr (warnings, tracebacks) passes through unchanged, only later: use it around
    short steps (TensorFlow's import, a LiteRT interpreter's creation), not around progress bars.
    """
    if not enabled:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.read().decode(errors="replace").splitlines(keepends=True)
                    if not startup_noise(line)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


def quiet_tensorflow_startup() -> None:
    """In the kerascomp command: import TensorFlow with its native start-up lines filtered out."""
    if not quiet_requested() or "TF_CPP_MIN_LOG_LEVEL" in os.environ:
        return
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    with native_lines_filtered():
        import tensorflow as tf

        tf.config.list_physical_devices()  # device discovery logs (cuInit) happen here, inside the window
        tf.get_logger().setLevel("ERROR")
