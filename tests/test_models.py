"""Tests for libml/models.py: sizes, shapes, dtypes, initializers, decay variables, dropout."""
import math

import keras
import numpy as np
import pytest

from libml import models
from libml.utils import UserError


def n_trainable(model):
    return sum(int(np.prod(v.shape)) for v in model.trainable_variables)


@pytest.fixture(scope='module')
def wrn28_2():
    return models.create_model('wrn', 10, (32, 32, 3))


@pytest.fixture(scope='module')
def cnn13():
    return models.create_model('cnn13', 10, (32, 32, 3))


def wrn_hand_count(nclass, channels, filters, scales, repeat):
    """Trainable parameters of the reference WRN, counted layer by layer: a conv k x k from a to b
    channels has k*k*a*b weights + b biases, a batch norm on c channels has 2c (gamma, beta)."""
    def conv(k, a, b):
        return k * k * a * b + b
    total, width = conv(3, channels, 16), 16
    for s in range(scales):
        out = filters << s
        for _ in range(repeat):
            total += 2 * width + conv(3, width, out) + 2 * out + conv(3, out, out)
            total += conv(1, width, out) if width != out else 0
            width = out
    return total + 2 * width + width * nclass + nclass


def test_wrn28_2_parameter_count_by_hand(wrn28_2):
    # stem 448; stage 0: 14528 + 3 x 18624; stage 1: 57728 + 3 x 74112; stage 2: 230144 + 3 x 295680;
    # head BN 256 and dense 1290
    assert wrn_hand_count(10, 3, 32, 3, 4) == 448 + 14528 + 3 * 18624 + 57728 + 3 * 74112 + 230144 + 3 * 295680 \
        + 256 + 1290 == 1469642
    assert n_trainable(wrn28_2) == 1469642
    assert n_trainable(models.create_model('wrn', 100, (32, 32, 3), filters=128)) == wrn_hand_count(100, 3, 128, 3, 4)
    # the moving mean and variance: two per batch-norm channel, as gamma and beta
    bn_channels = sum(int(np.prod(v.shape)) for v in wrn28_2.non_trainable_variables)
    assert bn_channels == sum(2 * layer.gamma.shape[0] for layer in wrn28_2.layers
                              if isinstance(layer, keras.layers.BatchNormalization))


@pytest.mark.parametrize('arch,nclass,shape,kwargs,expected,name', [
    ('wrn', 10, (32, 32, 3), {}, 1.47e6, 'wrn28_2'),
    ('wrn', 100, (32, 32, 3), dict(filters=128), 23.4e6, 'wrn28_8'),
    ('wrn', 10, (96, 96, 3), dict(scales=5), 23.8e6, None),
    ('resnet18', 10, (32, 32, 3), {}, 11.17e6, 'resnet18'),
    ('cnn13', 10, (32, 32, 3), {}, 3.12e6, 'cnn13'),
])
def test_parameter_counts(arch, nclass, shape, kwargs, expected, name):
    model = models.create_model(arch, nclass, shape, **kwargs)
    assert abs(n_trainable(model) / expected - 1) < 0.01, n_trainable(model)
    if name:
        assert model.name == name


def test_auto_scales():
    assert models.auto_scales((32, 32, 3)) == 3
    assert models.auto_scales((96, 96, 3)) == 5
    assert models.auto_scales((28, 28, 1)) == 3
    stl = models.create_model('wrn', 10, (96, 96, 3))
    assert n_trainable(stl) == n_trainable(models.create_model('wrn', 10, (96, 96, 3), scales=5))


@pytest.mark.parametrize('arch', models.ARCHS)
def test_output_shape_and_dtype(arch):
    model = models.create_model(arch, 7, (32, 32, 3), filters=8, repeat=1)
    x = np.random.RandomState(0).uniform(-1, 1, (3, 32, 32, 3)).astype('float32')
    logits = model(x, training=False)
    assert tuple(logits.shape) == (3, 7)
    assert keras.backend.standardize_dtype(logits.dtype) == 'float32'
    assert np.all(np.isfinite(np.asarray(logits)))


def test_resnet18_stems():
    small = models.create_model('resnet18', 10, (32, 32, 3))
    large = models.create_model('resnet18', 10, (96, 96, 3))
    assert small.get_layer('stem_conv').kernel_size == (3, 3)
    assert small.get_layer('stem_conv').strides == (1, 1)
    assert large.get_layer('stem_conv').kernel_size == (7, 7)
    assert large.get_layer('stem_conv').strides == (2, 2)
    assert 'stem_pool' in [layer.name for layer in large.layers]
    assert 'stem_pool' not in [layer.name for layer in small.layers]
    assert tuple(small.get_layer('stage3_block1_add').output.shape[1:]) == (4, 4, 512)
    assert tuple(large.get_layer('stage3_block1_add').output.shape[1:]) == (3, 3, 512)


@pytest.mark.parametrize('filters,expected', [(4, 8), (16, 7)])
def test_decay_variables_tiny_wrn(filters, expected):
    # filters=4: stem 1 + stage0 (conv1, conv2, shortcut 16->4) 3 + stage1 (4->8) 3 + dense 1 = 8.
    # filters=16: stage0 keeps 16 channels, so no shortcut conv there: 7.
    model = models.create_model('wrn', 10, (16, 16, 3), filters=filters, repeat=1, scales=2)
    decay = models.decay_variables(model)
    assert len(decay) == expected
    kernels = [layer.kernel for layer in model.layers
               if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense))]
    assert sorted(v.path for v in decay) == sorted(v.path for v in kernels)
    assert all(len(v.shape) in (2, 4) for v in decay)


@pytest.mark.parametrize('arch', models.ARCHS)
def test_only_kernels_end_in_kernel(arch):
    model = models.create_model(arch, 10, (32, 32, 3), filters=8, repeat=1)
    decay_ids = {id(v) for v in models.decay_variables(model)}
    for layer in model.layers:
        is_kernel_layer = isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense))
        for v in layer.weights:
            ends = v.path.endswith('kernel')
            assert ends == (is_kernel_layer and v is layer.kernel), v.path
            assert (id(v) in decay_ids) == ends, v.path
    # WRN convolutions have a bias (as the reference's tf.layers); the other architectures' are bias-free.
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert convs and all(layer.use_bias == (arch == 'wrn') for layer in convs)
    for layer in convs:
        if layer.use_bias:
            np.testing.assert_array_equal(np.asarray(layer.bias), 0)
            assert id(layer.bias) not in decay_ids


@pytest.mark.parametrize('arch', models.ARCHS)
def test_batch_norm_settings(arch):
    model = models.create_model(arch, 10, (32, 32, 3), filters=8, repeat=1)
    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert bns
    for layer in bns:
        assert layer.momentum == pytest.approx(0.999)
        assert layer.epsilon == pytest.approx(1e-3)
        assert not layer.synchronized
    synced = models.create_model(arch, 10, (32, 32, 3), filters=8, repeat=1, sync_bn=True)
    assert all(layer.synchronized for layer in synced.layers
               if isinstance(layer, keras.layers.BatchNormalization))


def test_fused_batch_norm_equals_keras_batch_norm():
    """The training-mode fused kernel gives Keras's outputs, gradients and moving statistics (biased
    batch variance), also through stateless_call (the passes that leave the statistics alone)."""
    import tensorflow as tf
    x = tf.random.stateless_normal([8, 6, 6, 5], [0, 1]) * 3 + 1
    results = []
    for cls in (keras.layers.BatchNormalization, models.FusedBatchNorm):
        layer = cls(momentum=0.9, epsilon=1e-3)
        layer.build(x.shape)
        layer.gamma.assign(tf.random.stateless_normal([5], [1, 2]) + 1)
        layer.beta.assign(tf.random.stateless_normal([5], [3, 4]))
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
            loss = tf.reduce_sum(y * tf.sin(y))
        grads = tape.gradient(loss, [x, layer.gamma, layer.beta])
        _, stateless = layer.stateless_call(layer.trainable_variables, layer.non_trainable_variables, x, training=True)
        results.append([y, *grads, layer.moving_mean, layer.moving_variance, *stateless,
                        layer(x, training=False)])
    mean, variance = np.mean(x.numpy(), (0, 1, 2)), np.var(x.numpy(), (0, 1, 2))  # biased, by hand
    np.testing.assert_allclose(results[1][4], 0.1 * mean, rtol=1e-5)  # 0.9 * 0 + 0.1 * mean
    np.testing.assert_allclose(results[1][5], 0.9 + 0.1 * variance, rtol=1e-5)
    for keras_value, fused_value in zip(*results):
        np.testing.assert_allclose(np.asarray(fused_value), np.asarray(keras_value), rtol=2e-5, atol=2e-5)
    plain = models.create_model('wrn', 10, (16, 16, 3), filters=8, repeat=1, scales=2, fused_bn=False)
    fused = models.create_model('wrn', 10, (16, 16, 3), filters=8, repeat=1, scales=2)
    synced = models.create_model('wrn', 10, (16, 16, 3), filters=8, repeat=1, scales=2, sync_bn=True)
    kinds = [{type(layer) for layer in m.layers if isinstance(layer, keras.layers.BatchNormalization)}
             for m in (plain, fused, synced)]
    assert kinds == [{keras.layers.BatchNormalization}, {models.FusedBatchNorm}, {keras.layers.BatchNormalization}]
    assert [v.path for v in plain.weights] == [v.path for v in fused.weights]  # checkpoints fit both


def test_wrn_layout(wrn28_2):
    bns = [layer for layer in wrn28_2.layers if isinstance(layer, keras.layers.BatchNormalization)]
    convs = [layer for layer in wrn28_2.layers if isinstance(layer, keras.layers.Conv2D)]
    assert len(bns) == 2 * 12 + 1  # two per block + head
    assert len(convs) == 1 + 2 * 12 + 3  # stem + two per block + three shortcuts
    assert wrn28_2.get_layer('stem_conv').filters == 16
    leaky = [layer for layer in wrn28_2.layers if isinstance(layer, keras.layers.LeakyReLU)]
    assert len(leaky) == len(bns)
    assert all(layer.negative_slope == pytest.approx(0.1) for layer in leaky)


def test_wrn_feature_map_shapes(wrn28_2):
    assert tuple(wrn28_2.get_layer('stem_conv').output.shape[1:]) == (32, 32, 16)
    expected = {0: (32, 32, 32), 1: (16, 16, 64), 2: (8, 8, 128)}
    for s, shape in expected.items():
        for b in range(4):
            assert tuple(wrn28_2.get_layer(f'stage{s}_block{b}_add').output.shape[1:]) == shape
        first = wrn28_2.get_layer(f'stage{s}_block0_conv1')
        assert first.strides == ((2, 2) if s else (1, 1))
        for b in range(1, 4):
            assert wrn28_2.get_layer(f'stage{s}_block{b}_conv1').strides == (1, 1)
    names = {layer.name for layer in wrn28_2.layers}
    assert {f'stage{s}_block0_shortcut' for s in range(3)} <= names
    assert not any(f'block{b}_shortcut' in n for n in names for b in range(1, 4))
    assert wrn28_2.get_layer('stage1_block0_shortcut').strides == (2, 2)


def source(model, layer_name, index=None):
    """Name of the layer whose output feeds `layer_name` (its `index`-th input for a merge layer)."""
    tensor = model.get_layer(layer_name).input
    if index is not None:
        tensor = tensor[index]
    return tensor._keras_history.operation.name


def test_wrn_shortcut_wiring_as_the_reference(wrn28_2):
    # activate_before_residual only for the first block of stage 0: its 1x1 shortcut starts from the
    # activated input; in stages 1 and 2 the shortcut takes the raw input (the previous block's sum)
    assert source(wrn28_2, 'stage0_block0_shortcut') == 'stage0_block0_1_act'
    assert source(wrn28_2, 'stage0_block0_1_bn') == 'stem_conv'
    assert source(wrn28_2, 'stage1_block0_shortcut') == 'stage0_block3_add'
    assert source(wrn28_2, 'stage2_block0_shortcut') == 'stage1_block3_add'
    for s in range(3):
        assert source(wrn28_2, f'stage{s}_block0_conv1') == f'stage{s}_block0_1_act'
        assert source(wrn28_2, f'stage{s}_block0_add', 0) == f'stage{s}_block0_shortcut'
        assert source(wrn28_2, f'stage{s}_block0_add', 1) == f'stage{s}_block0_conv2'
        for b in range(1, 4):  # identity shortcut of the raw input
            assert source(wrn28_2, f'stage{s}_block{b}_add', 0) == f'stage{s}_block{b - 1}_add'
            assert source(wrn28_2, f'stage{s}_block{b}_1_bn') == f'stage{s}_block{b - 1}_add'
    assert wrn28_2.get_layer('stage1_block0_shortcut').kernel.shape == (1, 1, 32, 64)
    assert wrn28_2.get_layer('stage1_block0_shortcut').bias.shape == (64,)
    assert source(wrn28_2, 'head_bn') == 'stage2_block3_add'


def test_wrn_shortcut_numerics_on_a_tiny_model():
    """One stage-1 block by hand: with the main path's last conv zeroed, the block's output is the
    1x1 shortcut conv (stride 2) of its RAW input, not of the activated one."""
    model = models.create_model('wrn', 3, (4, 4, 1), filters=2, scales=2, repeat=1)
    model.get_layer('stage1_block0_conv2').kernel.assign(np.zeros((3, 3, 4, 4), np.float32))
    model.get_layer('stage1_block0_conv2').bias.assign(np.zeros(4, np.float32))
    probe = keras.Model(model.input, [model.get_layer('stage0_block0_add').output,
                                      model.get_layer('stage1_block0_add').output])
    x = np.random.RandomState(3).uniform(-1, 1, (2, 4, 4, 1)).astype(np.float32)
    block_in, block_out = (np.asarray(t) for t in probe(x, training=False))
    shortcut = model.get_layer('stage1_block0_shortcut')
    w, b = np.asarray(shortcut.kernel)[0, 0], np.asarray(shortcut.bias)
    expected = block_in[:, ::2, ::2] @ w + b  # stride 2, 'same' padding: pixels 0 and 2
    np.testing.assert_allclose(block_out, expected, rtol=1e-5, atol=1e-6)
    activated = np.where(block_in > 0, block_in, 0.1 * block_in)  # lrelu(bn(x)), BN at its initial statistics ~ 1
    assert not np.allclose(block_out, activated[:, ::2, ::2] @ w + b, atol=1e-3)


def test_conv_initializer_statistics(wrn28_2):
    # stage2 conv2: 3x3x128x128 kernel, fan-out std sqrt(2 / (9 * 128)).
    w = np.asarray(wrn28_2.get_layer('stage2_block3_conv2').kernel)
    std = math.sqrt(2.0 / (3 * 3 * 128))
    assert w.std() == pytest.approx(std, rel=0.02)
    assert abs(w.mean()) < 0.01 * std
    # Untruncated: about 4.55% of a normal lies beyond 2 std; a truncated normal has none.
    assert np.mean(np.abs(w) > 2 * std) == pytest.approx(0.0455, abs=0.005)
    # First stage (fan-in 16*9 differs from fan-out 32*9): confirm fan-out, not fan-in.
    w = np.asarray(wrn28_2.get_layer('stage0_block0_conv1').kernel)
    assert w.std() == pytest.approx(math.sqrt(2.0 / (9 * 32)), rel=0.1)
    dense = wrn28_2.get_layer('logits')
    assert isinstance(dense.kernel_initializer, keras.initializers.GlorotNormal)


def test_mixed_precision_logits_float32():
    previous = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy('mixed_float16')
    try:
        model = models.create_model('wrn', 10, (16, 16, 3), filters=8, repeat=1, scales=2)
        assert model.get_layer('stem_conv').compute_dtype == 'float16'
        assert model.get_layer('logits').compute_dtype == 'float32'
        logits = model(np.zeros((2, 16, 16, 3), 'float32'), training=False)
        assert keras.backend.standardize_dtype(logits.dtype) == 'float32'
        dtypes = {keras.backend.standardize_dtype(v.dtype) for v in model.trainable_variables}
        assert dtypes == {'float32'}
    finally:
        keras.mixed_precision.set_global_policy(previous)
    assert keras.mixed_precision.global_policy().name == previous


def test_unknown_arch():
    with pytest.raises(UserError) as info:
        models.create_model('vgg', 10, (32, 32, 3))
    message = str(info.value)
    assert '\n' not in message
    for arch in models.ARCHS:
        assert arch in message


def test_cnn13_layout_and_dropout(cnn13):
    drops = [layer for layer in cnn13.layers if isinstance(layer, keras.layers.Dropout)]
    assert [layer.rate for layer in drops] == [0.5, 0.5]
    assert tuple(cnn13.get_layer('stage2_0_conv').output.shape[1:]) == (6, 6, 512)
    x = np.random.RandomState(1).uniform(-1, 1, (4, 32, 32, 3)).astype('float32')
    a, b = (np.asarray(cnn13(x, training=False)) for _ in range(2))
    np.testing.assert_array_equal(a, b)
    # Sub-model up to the first dropout: half the activations dropped, the rest scaled by 2.
    probe = keras.Model(cnn13.input, [cnn13.get_layer('stage0_pool').output,
                                      cnn13.get_layer('stage0_dropout').output])
    pooled, dropped = (np.asarray(t) for t in probe(x, training=True))
    kept = dropped != 0
    assert 0.45 < kept[pooled != 0].mean() < 0.55
    np.testing.assert_allclose(dropped[kept], 2 * pooled[kept], rtol=1e-5)
    pooled, dropped = (np.asarray(t) for t in probe(x, training=False))
    np.testing.assert_array_equal(dropped, pooled)
    c, d = (np.asarray(cnn13(x, training=True)) for _ in range(2))
    assert not np.allclose(c, d)


def test_head_dropout_option():
    model = models.create_model('wrn', 10, (16, 16, 3), filters=8, repeat=1, scales=2, dropout=0.3)
    assert model.get_layer('head_dropout').rate == pytest.approx(0.3)
    plain = models.create_model('wrn', 10, (16, 16, 3), filters=8, repeat=1, scales=2)
    assert not any(isinstance(layer, keras.layers.Dropout) for layer in plain.layers)
