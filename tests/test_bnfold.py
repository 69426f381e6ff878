"""BN weighting: folding gamma/sigma into convs is exact, unfolds bit for bit where nothing changed, and changes
what the methods keep (a filter its BN silences is the first to go)."""
import numpy as np
import pytest

import kerascomp
from kerascomp.graph.keras_io import read_model, write_model
from kerascomp.methods.bnfold import fold_batchnorm, unfold_batchnorm


def test_folding_is_exact_in_inference_and_training(module_resnet, images):
    graph = read_model(module_resnet)
    folded, folds = fold_batchnorm(graph)
    assert len(folds) == sum(spec.class_name == "Conv2D" for spec in graph.layers.values())
    assert any(not np.allclose(folded.layers[f.conv].weights[0], graph.layers[f.conv].weights[0]) for f in folds)
    model = write_model(folded)
    np.testing.assert_allclose(model.predict(images, verbose=0), module_resnet.predict(images, verbose=0),
                               rtol=1e-4, atol=1e-4)
    # in training mode only BN's epsilon (not scaled with the channel) makes a difference
    np.testing.assert_allclose(np.asarray(model(images, training=True)),
                               np.asarray(module_resnet(images, training=True)), rtol=1e-2, atol=1e-2)
    restored = unfold_batchnorm(folded, folds, {}, folded, graph)
    for name, spec in graph.layers.items():
        assert all(np.array_equal(a, b) for a, b in zip(spec.weights, restored.layers[name].weights)), name
    # without the untouched-pair shortcut the unfold is the inverse up to float rounding
    approximately = unfold_batchnorm(folded, folds)
    for fold in folds:
        np.testing.assert_allclose(approximately.layers[fold.conv].weights[0], graph.layers[fold.conv].weights[0],
                                   rtol=1e-5, atol=1e-6)


def test_bn_weighting_makes_pruning_drop_the_filter_its_bn_silences(keras, images):
    from kerascomp.zoo import cifar_resnet

    keras.utils.set_random_seed(0)
    model = cifar_resnet(depth=8, width=16, input_shape=(16, 16, 3), keras_module=keras)
    conv, bn = model.get_layer("s1b1_conv1"), model.get_layer("s1b1_bn1")
    kernel = conv.get_weights()[0]
    kernel[..., 3] *= 50.0  # the largest filter by L1 ...
    conv.set_weights([kernel])
    gamma, beta, mean, variance = bn.get_weights()
    gamma[3] = 1e-4  # ... that its BN multiplies by almost nothing
    bn.set_weights([gamma, beta, mean, variance])

    def removed(weighting):
        result = kerascomp.compress(model, "l1", target_flops=0.7, verbose=0, bn_weighting=weighting)
        group = next(g for g in result.report.choices["groups"].values() if "s1b1_conv1" in g["producers"])
        return {channel for channel, _ in group["removed"]}

    assert 3 in removed(True)
    assert 3 not in removed(False)


@pytest.mark.parametrize("method", ["fga", "svd", "tucker", "l1"])
def test_weighted_compression_gives_a_working_model_in_the_usual_scale(module_resnet, images, method):
    on = kerascomp.compress(module_resnet, method, target_flops=0.5, verbose=0, bn_weighting=True)
    off = kerascomp.compress(module_resnet, method, target_flops=0.5, verbose=0)  # off by default since 2026-12
    assert on.report.notes["bn_weighted_convs"] > 0 and "bn_weighted_convs" not in off.report.notes
    assert on.report.macs_ratio <= 0.5 + 1e-9
    reference = module_resnet.predict(images, verbose=0)
    for result in (on, off):
        output = result.model.predict(images, verbose=0)
        assert np.all(np.isfinite(output))
        assert np.abs(output - reference).mean() < 2 * np.abs(reference).mean()
    # unfolded: BN statistics of the layers kept whole are the original ones
    kept_bn = [layer.name for layer in module_resnet.layers if type(layer).__name__ == "BatchNormalization"
               and layer.name in {l.name for l in on.model.layers}
               and on.model.get_layer(layer.name).get_weights()[2].shape == layer.get_weights()[2].shape]
    assert kept_bn or method == "l1"  # l1 prunes every group of this ResNet-8
    for name in kept_bn:
        np.testing.assert_allclose(on.model.get_layer(name).get_weights()[3],
                                   module_resnet.get_layer(name).get_weights()[3], rtol=1e-4)
