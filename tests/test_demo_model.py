import numpy as np

import kerascomp
from kerascomp.data import load_npz
from kerascomp.loading import load_demo_model


def test_shipped_model_on_real_cifar(cifar_path):
    data = load_npz(cifar_path)
    x_test, y_test = data["x_test"][:500].astype("float32"), data["y_test"][:500]
    model = load_demo_model()

    def accuracy(m):
        return float(np.mean(np.argmax(np.asarray(m.predict(x_test, batch_size=250, verbose=0)), 1) == y_test))

    original = accuracy(model)
    assert original > 0.83  # 86.7% on the full test set (0.870 on these 500)
    plain = kerascomp.clone_compressed(model, target_flops=0.5, verbose=0)
    refined = kerascomp.clone_compressed(model, target_flops=0.5, data=data["x_train"][:256], verbose=0)
    # With data, reconstruction and BN recalibration must keep clearly more accuracy than the plain SVD
    # (measured on these 500 images: 0.802 vs 0.382).
    assert accuracy(refined) > accuracy(plain) + 0.25 and accuracy(refined) > 0.75


def test_cifar_mobilenetv2_builds_round_trips_and_prunes(keras):
    import kerascomp
    from kerascomp.graph.keras_io import read_model, write_model
    from kerascomp.zoo import cifar_mobilenetv2

    keras.utils.set_random_seed(0)
    model = cifar_mobilenetv2(alpha=0.35, keras_module=keras)
    assert model.output_shape == (None, 10)
    assert model.get_layer("head_conv").input.shape[1:3] == (4, 4)  # two stride-2 stages of the ImageNet net removed
    kinds = {type(layer).__name__ for layer in model.layers}
    assert {"DepthwiseConv2D", "Add", "ReLU", "Rescaling"} <= kinds
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(np.asarray(write_model(read_model(model))(x)), np.asarray(model(x)), atol=1e-5)
    small = kerascomp.clone_compressed(model, method="l1", target_flops=0.6, verbose=0)
    assert kerascomp.cost(small).macs <= 0.6 * kerascomp.cost(model).macs
