"""Joint SVD: the numpy maths, the svd/joint_svd pass, sharing through .keras and .tflite."""
import warnings

import numpy as np
import pytest
from conftest import _randomise_bn, flavour_independent, model_fingerprint
from hypothesis import given, settings
from hypothesis import strategies as st

import kerascomp
from kerascomp.decompose import jsvd
from kerascomp.errors import BudgetError, InvalidArgumentError
from kerascomp.graph.ir import LayerSpec
from kerascomp.graph.keras_io import infer_shapes, module_for, read_model, write_model
from kerascomp.methods import joint_svd
from kerascomp.zoo import cifar_resnet

pytestmark = pytest.mark.filterwarnings("ignore::kerascomp.CompressionWarning")


def _kernels(seed, n, shape):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=shape) for _ in range(n)]


def _stack_error(matrices, approximations):
    return sum(np.sum((m - a) ** 2) for m, a in zip(matrices, approximations)) / sum(np.sum(m ** 2) for m in matrices)


def _approximations(matrices, rank, variant):
    result = jsvd.decompose(matrices, rank, variant, iterations=30)
    if variant == "svd":
        return [a @ b for a, b in result]
    if variant == "left":
        return [result[0] @ b for b in result[1]]
    if variant == "right":
        return [a @ result[1] for a in result[0]]
    return result.approximations()


# --- numpy maths -------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(3, 3, 4, 6), (1, 5, 3, 2), (3, 1, 2, 7), (1, 1, 5, 4)])
def test_factor_kernels_reproduce_the_kernel_at_full_rank(shape):
    kernel = _kernels(0, 1, shape)[0]
    matrix = jsvd.spatial_matrix(kernel)
    assert matrix.shape == (shape[0] * shape[2], shape[1] * shape[3])
    np.testing.assert_allclose(jsvd.spatial_kernel(matrix, shape), kernel)
    left, right = jsvd.truncated(matrix, jsvd.full_rank(shape))
    vertical, horizontal = jsvd.factor_kernels(left, right, shape)
    assert vertical.shape[:2] == (shape[0], 1) and horizontal.shape[:2] == (1, shape[1])
    np.testing.assert_allclose(jsvd.reconstruct(vertical, horizontal), kernel, atol=1e-10)


@pytest.mark.parametrize("variant", jsvd.VARIANTS)
@pytest.mark.parametrize("n,shape", [(3, (3, 3, 4, 4)), (2, (3, 3, 2, 6)), (4, (1, 3, 5, 3))])
def test_full_rank_is_exact_and_the_curve_ends_at_zero(variant, n, shape):
    matrices = [jsvd.spatial_matrix(k) for k in _kernels(1, n, shape)]
    rank = jsvd.full_rank(shape, n, variant)
    assert _stack_error(matrices, _approximations(matrices, rank, variant)) < 1e-12
    if variant != "bi":
        assert jsvd.error_curve(matrices, variant)[rank] == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("variant", ["svd", "left", "right"])
def test_error_curve_is_the_achieved_error(variant):
    matrices = [jsvd.spatial_matrix(k) for k in _kernels(2, 3, (3, 3, 6, 6))]
    curve = jsvd.error_curve(matrices, variant)
    for rank in (1, 4, 9):
        assert _stack_error(matrices, _approximations(matrices, rank, variant)) == pytest.approx(curve[rank], rel=1e-9)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(2, 4), cin=st.integers(1, 5), cout=st.integers(1, 5), kh=st.integers(1, 3),
       kw=st.integers(1, 3), seed=st.integers(0, 10_000), variant=st.sampled_from(["left", "right"]))
def test_joint_at_n_times_the_rank_is_never_worse_than_per_layer(n, cin, cout, kh, kw, seed, variant):
    """Per-layer factors concatenated are a feasible joint solution at rank n*r, so the optimum can only be better."""
    shape = (kh, kw, cin, cout)
    matrices = [jsvd.spatial_matrix(k) for k in _kernels(seed, n, shape)]
    for rank in range(1, jsvd.full_rank(shape) + 1):
        joint_rank = min(n * rank, jsvd.full_rank(shape, n, variant))
        assert jsvd.error_curve(matrices, variant)[joint_rank] <= jsvd.error_curve(matrices, "svd")[rank] + 1e-12


@pytest.mark.parametrize("variant", ["left", "right", "bi"])
@pytest.mark.parametrize("n", [2, 4, 6])
def test_matched_rank_matches_params_and_the_papers_rate(variant, n):
    shape = (3, 3, 16, 16)
    for svd_rank in (2, 5, 8, 16):
        rank = jsvd.matched_rank(shape, n, svd_rank, variant)
        budget = jsvd.params(shape, svd_rank, n, "svd")
        assert jsvd.params(shape, rank, n, variant) <= budget < jsvd.params(shape, rank + 1, n, variant)
        if variant != "bi":
            assert rank == int(2 * n / (n + 1) * svd_rank + 1e-9)


def test_joint_wins_at_matched_params_when_layers_share_a_subspace():
    rng = np.random.default_rng(3)
    shape, n, svd_rank = (3, 3, 8, 8), 4, 4
    basis = rng.normal(size=(24, 6))
    matrices = [basis @ rng.normal(size=(6, 24)) + 0.05 * rng.normal(size=(24, 24)) for _ in range(n)]
    per_layer = jsvd.error_curve(matrices, "svd")[svd_rank]
    joint = jsvd.error_curve(matrices, "left")[jsvd.matched_rank(shape, n, svd_rank, "left")]
    assert joint < 0.5 * per_layer


def test_joint_can_lose_at_matched_params_on_unrelated_layers():
    """Not a theorem: with independent random kernels per-layer SVD is better at equal params."""
    shape, n, svd_rank = (3, 3, 16, 16), 4, 8
    matrices = [jsvd.spatial_matrix(k) for k in _kernels(0, n, shape)]
    joint = jsvd.error_curve(matrices, "left")[jsvd.matched_rank(shape, n, svd_rank, "left")]
    assert joint > jsvd.error_curve(matrices, "svd")[svd_rank]


def test_bi_joint_error_never_rises_and_beats_its_left_part():
    matrices = [jsvd.spatial_matrix(k) for k in _kernels(4, 4, (3, 3, 8, 8))]
    result = jsvd.bi_joint(matrices, 5, 5, iterations=20)
    assert all(b <= a + 1e-9 for a, b in zip(result.errors, result.errors[1:]))
    total = sum(np.sum(m ** 2) for m in matrices)
    assert result.errors[-1] / total <= jsvd.error_curve(matrices, "left")[5] + 1e-12
    assert result.errors[-1] / total <= jsvd.error_curve(matrices, "bi")[10] + 1e-12
    with pytest.raises(ValueError):
        jsvd.bi_joint(matrices, 0, 3)


# --- the pass ----------------------------------------------------------------------------------

@pytest.fixture
def resnet14(keras):
    keras.utils.set_random_seed(0)
    model = cifar_resnet(depth=14, width=8, input_shape=(16, 16, 3), keras_module=keras)
    _randomise_bn(model)
    return model


@pytest.fixture
def biased(keras):
    """Repeated 3x3 convs with biases: two followed by BN, two with a ReLU and no BN."""
    keras.utils.set_random_seed(1)
    inputs = keras.Input((12, 12, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", name="stem")(inputs)
    for i in range(2):
        y = keras.layers.Conv2D(8, 3, padding="same", name=f"bn_conv{i}")(x)
        x = keras.layers.Add()([x, keras.layers.BatchNormalization(name=f"bn{i}")(y)])
    for i in range(2):
        x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name=f"relu_conv{i}")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(4, name="head")(x))
    rng = np.random.default_rng(1)
    for layer in model.layers:
        if layer.weights:
            layer.set_weights([rng.normal(0, 0.3, w.shape) + (1.0 if "bn" in layer.name and i == 3 else 0.0)
                               for i, w in enumerate(layer.get_weights())])
    _randomise_bn(model)
    return model


def _full_rank(model, variant, **options):
    """Every unit of the pass factored at its exact (full) rank."""
    graph = read_model(model)
    shapes = infer_shapes(graph)
    opts = joint_svd.SVDOptions(variant=variant, min_saving=0.0, **options)
    units, _ = joint_svd.svd_units(graph, shapes, "svd" if variant == "svd" else "joint_svd", opts)
    for unit in units:
        joint_svd.factor_unit(graph, unit, jsvd.full_rank(unit.shape, len(unit.members), unit.variant), opts,
                         module_for(graph))
    return write_model(graph), units


@pytest.mark.parametrize("variant", ["svd", "left", "right", "bi"])
@pytest.mark.parametrize("fixture", ["resnet14", "biased"])
def test_full_rank_reproduces_outputs(variant, fixture, request):
    model = request.getfixturevalue(fixture)
    x = np.random.default_rng(0).uniform(0, 1, (4,) + tuple(model.input_shape[1:])).astype("float32")
    compressed, units = _full_rank(model, variant)
    if variant != "svd":
        assert any(len(u.members) > 1 for u in units)
    np.testing.assert_allclose(compressed.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5, rtol=1e-4)


def test_groups_are_found_per_stage_without_the_shape_changing_conv(resnet14):
    graph = read_model(resnet14)
    units, _ = joint_svd.svd_units(graph, infer_shapes(graph), "joint_svd", joint_svd.SVDOptions(grouping="shape"))
    groups = sorted(sorted(m.spec.name for m in u.members) for u in units if len(u.members) > 1)
    singles = sorted(u.members[0].spec.name for u in units if len(u.members) == 1)
    assert [len(g) for g in groups] == [4, 3, 3]  # stage 2 and 3: the first conv changes shape
    assert all(name.startswith(f"s{i + 1}") for i, group in enumerate(groups) for name in group) and "s2b1_conv1" in singles and "s3b1_conv1" in singles


def test_default_groups_split_each_stage_by_position_in_the_block(resnet14):
    graph = read_model(resnet14)
    assert [joint_svd.block_position(graph, graph.nodes_of(name)[0]) for name in
            ("stem_conv", "s1b1_conv1", "s1b1_conv2", "s2b1_conv1", "s2b2_conv2")] == [None, 0, 1, 0, 1]
    units, _ = joint_svd.svd_units(graph, infer_shapes(graph), "joint_svd", joint_svd.SVDOptions())
    groups = sorted(sorted(m.spec.name for m in u.members) for u in units if len(u.members) > 1)
    # the authors' grouping: a stage's first convs together, its second convs together
    assert groups == [["s1b1_conv1", "s1b2_conv1"], ["s1b1_conv2", "s1b2_conv2"], ["s2b1_conv2", "s2b2_conv2"],
                      ["s3b1_conv2", "s3b2_conv2"]]
    # a plain stack has no blocks: its repeated convs still group by shape
    keras = kerascomp._default_keras()
    inputs = keras.Input((12, 12, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", name="c0")(inputs)
    for index in range(1, 4):
        x = keras.layers.ReLU()(keras.layers.Conv2D(8, 3, padding="same", name=f"c{index}")(x))
    plain = read_model(keras.Model(inputs, x))
    assert [joint_svd.block_position(plain, plain.nodes_of(f"c{i}")[0]) for i in range(4)] == [None] * 4
    units, _ = joint_svd.svd_units(plain, infer_shapes(plain), "joint_svd", joint_svd.SVDOptions())
    assert sorted(m.spec.name for u in units if len(u.members) > 1 for m in u.members) == ["c1", "c2", "c3"]
    with pytest.raises(InvalidArgumentError, match="grouping"):
        kerascomp.compress(resnet14, "joint_svd", target_params=0.5, grouping="blocks", verbose=0)


@pytest.mark.parametrize("variant", ["left", "right", "bi"])
def test_params_equal_the_plan_and_meet_the_target(resnet14, variant):
    fingerprint = model_fingerprint(resnet14)
    result = kerascomp.compress(resnet14, "joint_svd", target_params=0.3, variant=variant, allocation="uniform",
                                verbose=0)  # uniform: every group is factored, so each shares a layer
    cost = kerascomp.cost(result.model)
    assert cost.params == result.report.params_after and cost.macs == result.report.macs_after
    assert cost.params <= 0.3 * kerascomp.cost(resnet14).params
    assert model_fingerprint(resnet14) == fingerprint
    graph = read_model(result.model)
    shared = [name for name in graph.layers if len(graph.nodes_of(name)) > 1]
    assert len(shared) == (8 if variant == "bi" else 4)


def test_svd_and_flops_target(resnet14, images):
    result = kerascomp.compress(resnet14, "svd", target_flops=0.4, allocation="uniform", verbose=0)
    cost = kerascomp.cost(result.model)
    assert cost.macs <= 0.4 * kerascomp.cost(resnet14).macs and cost.macs == result.report.macs_after
    assert {d.action.split()[0] for d in result.report.layers} >= {"svd", "kept"}
    # the stem (6% of the MACs) is factored for a MACs target, at the smallest rank of the tile step taken
    step = result.report.notes["tile_step"]
    assert step in (4, 8) and result.report.layers[0].action == f"svd r={step}"
    one = kerascomp.compress(resnet14, "svd", target_flops=0.4, allocation="uniform", rank_multiple=1, verbose=0)
    assert one.report.layers[0].action == "svd r=2"  # steps of 1 go lower


def test_joint_fits_saves_loads_and_keeps_sharing(resnet14, keras, tmp_path, images):
    model = kerascomp.clone_compressed(resnet14, "joint_svd", target_params=0.3, target_flops=None, variant="bi",
                                       verbose=0)
    model.compile(keras.optimizers.SGD(0.01), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(images[:8] / 255.0, np.arange(8) % 10, epochs=1, verbose=0)
    path = tmp_path / "joint.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    graph = read_model(loaded)
    shared = [name for name in graph.layers if len(graph.nodes_of(name)) > 1]
    assert shared and {name: len(graph.nodes_of(name)) for name in shared} == \
        {name: len(read_model(model).nodes_of(name)) for name in shared}
    layer = loaded.get_layer(shared[0])
    assert sum(1 for w in loaded.weights if w is layer.weights[0]) == 1  # one variable, not a copy per call
    assert sum(int(np.prod(w.shape)) for w in loaded.weights) == kerascomp.cost(model).params  # nothing duplicated
    np.testing.assert_allclose(loaded.predict(images, verbose=0), model.predict(images, verbose=0), atol=1e-5)


def _unshare(model):
    """The same model with every shared layer copied per call, each copy nudged by 1e-6 relative.

    The nudge matters: the TFLite converter stores byte-identical constants once, so exact copies
    would be merged again. A BatchNormalization folded into each call of a shared conv is what
    produces distinct copies in practice.
    """
    rng = np.random.default_rng(0)
    graph = read_model(model)
    for name in [n for n in graph.layers if len(graph.nodes_of(n)) > 1]:
        spec = graph.layers[name]
        for index, node in enumerate(graph.nodes_of(name)[1:], start=1):
            copy_name = graph.unique_name(f"{name}_copy{index}")
            graph.layers[copy_name] = LayerSpec(copy_name, spec.cls, {**spec.config, "name": copy_name},
                                                [w * (1 + 1e-6 * rng.standard_normal(w.shape)).astype(w.dtype) for w in spec.weights])
            node.layer = copy_name
    return write_model(graph)


# right: BN follows the shared conv (Keras 3 pass only, to keep CI short); bi: both kinds shared
@pytest.mark.parametrize("variant", [pytest.param("right", marks=flavour_independent), "bi"])
def test_tflite_stores_shared_weights_once(keras, variant, tmp_path):
    keras.utils.set_random_seed(0)
    base = cifar_resnet(depth=14, width=16, input_shape=(8, 8, 3), keras_module=keras)
    _randomise_bn(base)
    model = kerascomp.clone_compressed(base, "joint_svd", target_params=0.4, target_flops=None, variant=variant,
                                       allocation="uniform", verbose=0)  # every group factored and shared
    shared_export = kerascomp.export_tflite(model, tmp_path / "shared.tflite")
    broken = _unshare(model)
    broken_export = kerascomp.export_tflite(broken, tmp_path / "broken.tflite")
    params, broken_params = kerascomp.cost(model).params, kerascomp.cost(broken).params
    assert broken_params > 1.15 * params
    overhead = broken_export.size_bytes - 4 * broken_params  # graph structure, the same ops in both files
    assert abs(shared_export.size_bytes - (4 * params + overhead)) <= 0.05 * shared_export.size_bytes
    assert shared_export.size_bytes < broken_export.size_bytes - 0.8 * 4 * (broken_params - params)
    assert shared_export.max_abs_error < 1e-4


def test_strip_freezes_batchnorm_after_a_shared_conv(biased, keras):
    model = kerascomp.clone_compressed(biased, "joint_svd", target_params=0.6, target_flops=None, variant="right",
                                       verbose=0, min_saving=0.0)
    stripped = kerascomp.strip(model)
    assert type(stripped.get_layer("bn0")).__name__ == "DepthwiseConv2D"
    assert type(model.get_layer("bn0")).__name__ == "BatchNormalization"
    graph, stripped_graph = read_model(model), read_model(stripped)
    shared = {name: len(graph.nodes_of(name)) for name in graph.layers if len(graph.nodes_of(name)) > 1}
    assert shared and shared == {name: len(stripped_graph.nodes_of(name)) for name in shared}
    x = np.random.default_rng(0).uniform(0, 1, (4, 12, 12, 3)).astype("float32")
    np.testing.assert_allclose(stripped.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5)
    # relu_conv* have a bias and an activation but no BN: a depthwise tail carries both
    assert type(model.get_layer("relu_conv0")).__name__ == "DepthwiseConv2D"


def test_explicit_groups_by_name_and_regex(resnet14):
    by_name = kerascomp.compress(resnet14, "joint_svd", target_params=0.5, verbose=0,
                                 groups=[["s3b1_conv2", "s3b2_conv1", "s3b2_conv2"]])
    by_regex = kerascomp.compress(resnet14, "joint_svd", target_params=0.5, verbose=0, groups=["s3b[12]_conv2|s3b2_conv1"])
    for result in (by_name, by_regex):
        assert result.report.notes["joint groups"] == "jsvd0: 3 convs"
    assert kerascomp.cost(by_name.model).params == kerascomp.cost(by_regex.model).params


@pytest.mark.parametrize("options,message", [
    ({"groups": [["s3b1_conv2", "nope"]]}, "'nope'"),
    ({"groups": [["s3b1_conv1", "s3b2_conv1"]]}, "cannot share factors"),
    ({"groups": [["s3b2_conv1"]]}, "at least 2"),
    ({"groups": [["s3b2_conv1", "s3b2_conv2"], ["s3b2_conv2", "s3b1_conv2"]]}, "one group only"),
    ({"groups": ["zzz.*"]}, "matches no eligible"),
    ({"groups": "s3.*"}, "groups must be a list"),
    ({"groups": [["s3b1_proj", "s2b1_proj"]]}, "1x1 conv"),
    ({"variant": "middle"}, "variant must be one of.*'middle'"),
    ({"allocation": "greedy"}, "allocation must be one of.*'greedy'"),
    ({"rank_multiple": 0}, "rank_multiple"),
    ({"min_saving": 1.5}, "min_saving"),
    ({"recalibrate": True}, "needs data"),
    ({"colour": 1}, "unknown option"),
])
def test_bad_options_name_the_problem(resnet14, options, message):
    with pytest.raises(InvalidArgumentError, match=message):
        kerascomp.compress(resnet14, "joint_svd", target_params=0.5, verbose=0, **options)


def test_svd_refuses_groups_and_impossible_targets(resnet14):
    with pytest.raises(InvalidArgumentError, match="method='joint_svd'"):
        kerascomp.compress(resnet14, "svd", target_params=0.5, verbose=0, groups=[["a", "b"]])
    with pytest.raises(BudgetError, match="params target cannot be met"):
        kerascomp.compress(resnet14, "joint_svd", target_params=0.01, verbose=0)


def test_full_budget_changes_nothing_and_recalibration_uses_data(resnet14, images):
    result = kerascomp.compress(resnet14, "joint_svd", target_params=1.0, verbose=0)
    np.testing.assert_allclose(result.model.predict(images, verbose=0), resnet14.predict(images, verbose=0), atol=1e-6)
    calibrated = kerascomp.compress(resnet14, "joint_svd", target_params=0.5, data=images, verbose=0,
                                    reconstruct=False)  # recalibrate="auto" runs where reconstruction does not
    assert calibrated.report.notes["recalibrated_batchnorms"] > 0
    refit = kerascomp.compress(resnet14, "joint_svd", target_params=0.5, data=images, verbose=0)
    assert refit.report.notes["recalibrated_batchnorms"] == 0 and "skipped" in refit.report.notes["recalibration"]


def test_global_allocation_and_rank_multiple(resnet14):
    result = kerascomp.compress(resnet14, "joint_svd", target_params=0.4, allocation="global", rank_multiple=4,
                                verbose=0)
    ranks = [d.detail["rank"] for d in result.report.layers if "rank" in d.detail]
    assert ranks and all(r % 4 == 0 for r in ranks)
    assert kerascomp.cost(result.model).params <= 0.4 * kerascomp.cost(resnet14).params


def test_models_without_factorable_convs_are_refused_with_reasons(keras):
    inputs = keras.Input((8, 8, 4))
    shared = keras.layers.Conv2D(4, 3, padding="same", name="shared_conv")
    x = shared(shared(inputs))
    x = keras.layers.DepthwiseConv2D(3, name="dw")(x)
    model = keras.Model(inputs, keras.layers.Conv2D(4, 1, name="pw")(x))
    with pytest.raises(kerascomp.errors.UnsupportedModelError) as error:
        kerascomp.compress(model, "joint_svd", target_params=0.5, pointwise=False, verbose=0)
    for text in ("shared_conv: shared layer (called more than once)", "dw: DepthwiseConv2D is not a dense Conv2D", "pw: 1x1 conv"):
        assert text in str(error.value)
    # by default the 1x1 conv is tried too; it cannot pay for the budget, and the refusal says so
    with pytest.raises(kerascomp.errors.BudgetError, match=r"even with its 1x1 convs factored \(pointwise='auto' tried "
                                                           r"all three; the kxk convs alone: nothing to factor; "
                                                           r"expansion pruning: no prunable channel group passes "
                                                           r"through a depthwise conv .*\).*"
                                                           r"shared_conv \(shared layer") as refused:
        kerascomp.compress(model, "joint_svd", target_params=0.5, verbose=0)
    assert 0.5 < refused.value.reachable < 1


def test_layers_min_saving_leaves_dense_are_taken_back_as_far_as_the_budget_needs(keras):
    """NASNet holds most of its MACs in hundreds of small 1x1 convs, each under min_saving: left out, they made
    half its MACs unreachable for svd (at best 0.553). The largest are taken back, as few as the budget needs."""
    layers = keras.layers
    inputs = keras.Input((8, 8, 32))
    x = inputs
    for index in range(12):  # twelve equal 1x1 convs: each saves ~1/24 of the MACs at its lowest rank
        x = layers.Conv2D(32, 1, activation="relu", name=f"pw{index}")(x)
    model = keras.Model(inputs, layers.Dense(3, name="fc")(layers.GlobalAveragePooling2D()(x)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", kerascomp.CompressionWarning)
        # every layer saves ~4% < min_saving=0.2: before, all were left dense and the target was refused
        loose = kerascomp.compress(model, "svd", target_flops=0.8, pointwise=True, min_saving=0.2, verbose=0)
    assert loose.report.macs_ratio <= 0.8
    small = [row for row in loose.report.layers if row.reason.startswith("too small: factoring saves at most")]
    factored = [row for row in loose.report.layers if row.macs_after < row.macs_before]
    # 0.2 of 786,528 MACs is 157,306; rank 8 (the step of 8) saves 32,768 per layer: five are needed, four fall short
    assert (len(factored), len(small)) == (5, 7)
