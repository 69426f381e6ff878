#!/usr/bin/env bash
# The venv for the benchmark's MCT peer: MCT's Keras pruning refuses TensorFlow > 2.15, so it gets
# its own TF 2.15 next to kerascomp's (about 1.5 GB, a few minutes). Run from the repository root.
set -euo pipefail
python3 -m venv .venv-mct
.venv-mct/bin/pip install -q "tensorflow-cpu==2.15.*" "model-compression-toolkit==2.6.1"
.venv-mct/bin/python -c "import model_compression_toolkit as m, tensorflow as t; print('MCT', m.__version__, 'TF', t.__version__)"
