"""Every code block in README.md and docs/ runs: the Python blocks execute (on a small model, in a scratch
folder), and every ``kerascomp ...`` command in a bash block parses with the real CLI parser."""
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
from conftest import _randomise_bn, flavour_independent

import kerascomp
from kerascomp.cli import build_parser
from kerascomp.methods import registry
from kerascomp.zoo import cifar_resnet

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md"] + sorted((ROOT / "docs").rglob("*.md"))
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)


def blocks(language: str) -> list[tuple[str, int, str]]:
    found = []
    for page in PAGES:
        text = page.read_text()
        for match in FENCE.finditer(text):
            if match.group(1) == language:
                found.append((str(page.relative_to(ROOT)), text[:match.start()].count("\n") + 1, match.group(2)))
    return found


PYTHON = blocks("python")
BASH = blocks("bash")


def test_the_pages_have_code_to_check():
    assert len(PYTHON) >= 8 and len(BASH) >= 5  # a broken fence pattern would make every check vacuous


def test_readme_is_short():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250


def test_every_relative_link_resolves():
    broken = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" not in target and not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert not broken, "\n".join(broken)


@pytest.fixture
def namespace(keras, tmp_path, monkeypatch):
    """What the examples assume: a trained-looking model, training and validation data, a train function."""
    import tensorflow as tf

    monkeypatch.chdir(tmp_path)
    keras.utils.set_random_seed(0)
    model = cifar_resnet(depth=8, width=16, input_shape=(16, 16, 3), keras_module=keras)
    _randomise_bn(model)
    rng = np.random.default_rng(0)
    x_train = rng.uniform(0, 255, (64, 16, 16, 3)).astype("float32")
    y_train = (np.arange(64) % 10).astype("int32")
    kerascomp.export_tflite(model, "model.tflite")

    def train(m):
        m.compile(keras.optimizers.SGD(0.001), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        m.fit(x_train, y_train, epochs=1, batch_size=32, verbose=0)

    return {"kerascomp": kerascomp, "keras": keras, "tf": tf, "np": np, "model": model, "x_train": x_train,
            "y_train": y_train, "x_val": x_train[:32], "y_val": y_train[:32], "train": train,
            "train_dataset": tf.data.Dataset.from_tensor_slices((x_train, y_train)).batch(32)}


@flavour_independent
@pytest.mark.parametrize("page, line, code", PYTHON, ids=[f"{p}:{n}" for p, n, _ in PYTHON])
def test_python_block_runs(page, line, code, namespace):
    before = set(registry.names())
    try:
        exec(compile(code, f"{page}:{line}", "exec"), namespace)  # noqa: S102 - the docs are ours
    finally:
        for name in set(registry.names()) - before:
            registry.unregister(name)


def commands(code: str) -> list[str]:
    """The ``kerascomp`` command lines of a bash block (continuations joined, optional ``[...]`` flags kept)."""
    joined = code.replace("\\\n", " ")
    found = []
    for line in joined.splitlines():
        line = line.split(" #")[0].strip()
        words = line.split()
        while words and re.match(r"^[A-Z_]+=", words[0]):  # KERASCOMP_DATA=... prefixes
            words.pop(0)
        if words and words[0] == "kerascomp":
            found.append(" ".join(words[1:]).replace("[", "").replace("]", ""))
    return found


CLI = [(page, line, command) for page, line, code in BASH for command in commands(code)]


def test_the_bash_blocks_hold_kerascomp_commands():
    assert len(CLI) >= 10


@pytest.mark.parametrize("page, line, command", CLI, ids=[f"{p}:{n}:{c.split()[0]}" for p, n, c in CLI])
def test_cli_command_parses(page, line, command):
    build_parser().parse_args(shlex.split(command))
