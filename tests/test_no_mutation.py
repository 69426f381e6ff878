"""Every public function leaves the user's model (weights, config, trainable flags, compiled optimizer)
and data untouched, and compressing is deterministic: the same inputs give a bit-identical model."""
import hashlib

import numpy as np
import pytest
from conftest import flavour_independent, model_fingerprint, weights_hash

import kerascomp
from kerascomp.api import METHODS
from kerascomp.graph.flavour import legacy_requested


@pytest.fixture
def users_model(small_resnet, keras):
    """The user's model as it is mid-project: compiled, with a frozen stem."""
    small_resnet.get_layer("stem_conv").trainable = False
    small_resnet.compile(keras.optimizers.SGD(0.01), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return small_resnet


@pytest.fixture
def labelled(images):
    return images, np.arange(len(images)) % 10


def _options(method, labelled):
    if method == "collaborative":
        return {"data": labelled, "target_flops": 0.6}
    if method == "joint_svd":
        return {"data": labelled[0], "target_params": 0.7, "target_flops": None}
    return {"data": labelled[0], "target_flops": 0.6}


def _array_hash(*arrays):
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def _calls(tmp_path, labelled):
    x, _ = labelled

    def rounds(model):
        return kerascomp.prune_in_rounds(model, lambda m: None, method="l1", target_flops=0.7, rounds=1, verbose=0)

    calls = {  # clone_compressed of every method: test_the_same_inputs_give_an_identical_model
        "compress": lambda model: kerascomp.compress(model, "l1", target_params=0.6, data=x, verbose=0),
        "plan": lambda model: kerascomp.plan(model, target_flops=0.6, data=labelled, verbose=0),
        "strip": kerascomp.strip,
        "cost": kerascomp.cost,
        "export_tflite": lambda model: kerascomp.export_tflite(model, tmp_path / "m.tflite", check_samples=2),
        "export_tflite[int8]": lambda model: kerascomp.export_tflite(model, tmp_path / "q.tflite", quantize="int8",
                                                                     representative_data=x[:8]),
        "prune_in_rounds": rounds,
    }
    if legacy_requested():  # tfmot needs tf_keras; the Keras 3 bridge is tested in test_qat.py
        calls["quantize_aware"] = kerascomp.quantize_aware
    return calls


CALLS = ["compress", "plan", "strip", "cost", "export_tflite", "export_tflite[int8]", "prune_in_rounds",
         "quantize_aware"]


@pytest.mark.parametrize("name", CALLS)
def test_public_functions_leave_model_and_data_untouched(users_model, labelled, tmp_path, name, recwarn):
    calls = _calls(tmp_path, labelled)
    if name not in calls:
        pytest.skip("quantize_aware runs in the tf_keras pass")
    before, data_before = model_fingerprint(users_model), _array_hash(*labelled)
    optimizer = users_model.optimizer
    calls[name](users_model)
    assert model_fingerprint(users_model) == before
    assert users_model.optimizer is optimizer
    assert not users_model.get_layer("stem_conv").trainable
    assert _array_hash(*labelled) == data_before


def test_plan_application_leaves_model_untouched(users_model, labelled):
    planned = kerascomp.plan(users_model, target_flops=0.6, data=labelled, verbose=0)
    before = model_fingerprint(users_model)
    kerascomp.clone_compressed(users_model, plan=planned, data=labelled[0], verbose=0)
    assert model_fingerprint(users_model) == before


@pytest.mark.parametrize("method", METHODS)
def test_the_same_inputs_give_an_identical_model(users_model, labelled, method, recwarn):
    """clone_compressed twice: bit-identical results, and the model and data untouched by either call."""
    before, data_before = model_fingerprint(users_model), _array_hash(*labelled)
    first = kerascomp.clone_compressed(users_model, method, verbose=0, **_options(method, labelled))
    second = kerascomp.clone_compressed(users_model, method, verbose=0, **_options(method, labelled))
    assert model_fingerprint(users_model) == before and _array_hash(*labelled) == data_before
    assert weights_hash(first) == weights_hash(second)
    assert first.get_config() == second.get_config()
    assert weights_hash(first) != weights_hash(users_model)


@flavour_independent
def test_the_frozen_flag_is_carried_into_the_compressed_model(users_model, labelled, recwarn):
    """A layer the user froze stays frozen: pruned in place, or each of its factors frozen."""
    pruned = kerascomp.clone_compressed(users_model, "l1", target_flops=0.6, verbose=0)
    assert not pruned.get_layer("stem_conv").trainable
    factored = kerascomp.clone_compressed(users_model, "svd", target_flops=0.6, verbose=0, min_saving=0.0)
    stem_parts = [layer for layer in factored.layers if layer.name.startswith("stem_conv")]
    assert stem_parts and not any(layer.trainable for layer in stem_parts)
