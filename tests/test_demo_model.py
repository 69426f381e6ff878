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
