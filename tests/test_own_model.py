"""Bring your own model (libml/backbones.py): keras.applications, KerasHub presets, a builder module and
run(model=...) train, resume, evaluate and export; weights files; kernels decayed by identity; one-line refusals.
Nothing here downloads: weights are none or files written into tmp_path."""
import glob
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import fixmatch
from conftest import ROOT
from libml import backbones
from libml import models
from libml import settings as settings_lib
from libml import state
from libml import train
from libml import utils
from test_resume import op_determinism, train_again_until_killed  # noqa: F401 (op_determinism: a fixture)
from test_train import trained_state

sys.path.insert(0, os.path.join(ROOT, 'scripts'))
import evaluate  # noqa: E402
import export  # noqa: E402

# 8 steps of 8 labeled (+ 8 unlabeled) images, a checkpoint every 4, evaluations on 200 images.
SMALL = dict(dataset='fashion_mnist.1@40-1', batch=8, uratio=1, train_kimg=0.0625, report_kimg=0.0625,
             save_kimg=0.03125, eval_size=200, augment='d.d.d', ema=0.9, keep_ckpt=10)
MOBILE = dict(SMALL, arch='keras:MobileNetV3Small', input_size=32)


def run_dirs(train_dir):
    return [os.path.dirname(p) for p in glob.glob(os.path.join(str(train_dir), '**', 'args.json'), recursive=True)]


def one_line_error(call, match):
    with pytest.raises(utils.UserError, match=match) as info:
        call()
    assert '\n' not in str(info.value)
    return str(info.value)


def resolve(**values):
    return settings_lib.resolve(fixmatch.FixMatch.all_params(), values)


# ---------------------------------------------------------------------------------------------- sources, checks

def test_arch_values_are_checked_with_one_line(tmp_path, monkeypatch):
    one_line_error(lambda: resolve(arch='vgg'), r"--arch='vgg' is not a model source; use wrn, resnet18")
    message = one_line_error(lambda: resolve(arch='keras:ResNet50V3'), 'keras.applications has no ResNet50V3')
    assert 'ResNet50V2' in message and 'MobileNetV3Small' in message
    one_line_error(lambda: resolve(arch=f'hub:{tmp_path}/missing'), 'no such folder')
    one_line_error(lambda: resolve(arch='hub:resnet_9000_nowhere'), 'not a KerasHub preset')
    one_line_error(lambda: resolve(arch='no_such_module_22:build'), r'cannot import no_such_module_22 \(Module')
    (tmp_path / 'mine22.py').write_text('def other(nclass, input_shape):\n    return None\n')
    monkeypatch.chdir(tmp_path)
    one_line_error(lambda: resolve(arch='mine22:build'), 'mine22 has no function build')
    one_line_error(lambda: resolve(weights='nowhere.weights.h5'), 'no such file')
    one_line_error(lambda: resolve(weights='imagenet.h5'), 'neither none, imagenet, preset')
    assert resolve(arch='mine22:other').arch == 'mine22:other'
    assert resolve(arch='keras:ResNet50V2', weights='imagenet').weights == 'imagenet'


def test_settings_of_another_source_are_refused(fashion_mnist, tmp_path):
    params = fixmatch.FixMatch.all_params()
    cases = [(dict(arch='keras:MobileNetV3Small', filters=8), '--filters shapes the WRN only'),
             (dict(arch='resnet18', repeat=2), '--repeat shapes the WRN only'),
             (dict(arch='keras:MobileNetV3Small', local=True, scales=2), '--scales shapes the WRN only'),
             (dict(arch='wrn', weights='imagenet'), '--weights=imagenet is for keras:'),
             (dict(arch='keras:MobileNetV3Small', weights='preset'), '--weights=preset is for hub:'),
             (dict(arch='cnn13', input_size=64), '--input_size resizes the images for a keras: or hub:')]
    for values, match in cases:
        settings = settings_lib.resolve(params, dict(SMALL, train_dir=str(tmp_path), **values))
        one_line_error(lambda: train.Trainer(fixmatch.FixMatch, settings), match)
    # --local's own filters=16 / repeat=1 are not the user's: accepted for any source
    backbones.check_settings(settings_lib.resolve(params, dict(arch='keras:MobileNetV3Small', local=True)), params)
    backbones.check_settings(settings_lib.resolve(params, dict(arch='resnet18', filters=32)), params)  # = default
    assert run_dirs(tmp_path) == []


def test_input_scaling_is_the_backbones_own_preprocessing():
    """x in [-1, 1] -> what preprocess_input gives for the pixels p = 127.5 (x + 1), by hand per mode."""
    def scaling(name):
        builder = backbones.keras_application(name)
        return backbones.from_unit_range(*backbones.measured_affine(sys.modules[builder.__module__].preprocess_input))
    matrix, bias = scaling('ResNet50V2')  # 'tf' mode: p / 127.5 - 1 = x
    np.testing.assert_allclose(matrix, np.eye(3), atol=1e-6)
    np.testing.assert_allclose(bias, 0, atol=1e-5)
    matrix, bias = scaling('ResNet50')  # 'caffe': BGR, minus the ImageNet means (103.939, 116.779, 123.68)
    np.testing.assert_allclose(matrix, 127.5 * np.eye(3)[::-1], atol=1e-4)
    np.testing.assert_allclose(bias, [127.5 - 103.939, 127.5 - 116.779, 127.5 - 123.68], atol=1e-3)
    matrix, bias = scaling('EfficientNetV2B0')  # rescales inside: pixels in [0, 255]
    np.testing.assert_allclose(matrix, 127.5 * np.eye(3), atol=1e-4)
    np.testing.assert_allclose(bias, 127.5, atol=1e-4)
    matrix, bias = scaling('DenseNet121')  # 'torch': (p / 255 - 0.485) / 0.229 for red
    assert matrix[0][0] == pytest.approx(0.5 / 0.229, rel=1e-5) and bias[0] == pytest.approx(0.015 / 0.229, abs=1e-5)
    layer = backbones.ChannelAffine(127.5 * np.eye(3)[::-1], [1., 2., 3.])
    x = np.array([[[[-1., 0., 1.]]]], np.float32)
    np.testing.assert_allclose(layer(x).numpy(), [[[[128.5, 2., -124.5]]]], atol=1e-5)  # (127.5, 0, -127.5) + b


def test_decay_is_the_kernels_found_by_identity():
    # the built-ins: exactly the variables the path rule gave before, in the same order
    for arch in models.ARCHS:
        model = models.create_model(arch, 10, (32, 32, 3), filters=8, repeat=1)
        assert [v.path for v in models.decay_variables(model)] == \
            [v.path for v in model.trainable_variables if v.path.split('/')[-1] == 'kernel']

    class Scale(keras.layers.Layer):  # a variable NAMED kernel that is no conv or dense kernel: not decayed
        def build(self, shape):
            self.kernel = self.add_weight(shape=(shape[-1],), initializer='ones', name='kernel')

        def call(self, x):
            return x * self.kernel

    inputs = keras.Input((8, 8, 3))
    x = keras.layers.SeparableConv2D(4, 3, name='sep')(inputs)              # depthwise + pointwise kernels, bias
    x = keras.layers.DepthwiseConv2D(3, name='depth')(x)                     # kernel, bias
    x = keras.layers.Conv2DTranspose(4, 2, name='up')(x)                     # kernel, bias
    x = Scale(name='scale')(x)                                               # 'kernel' by name only
    x = keras.layers.BatchNormalization(name='bn')(x)                        # gamma, beta
    x = keras.layers.Reshape((-1, 4))(x)
    x = keras.layers.EinsumDense('abc,cd->abd', (None, 6), bias_axes='d', name='einsum')(x)  # kernel, bias
    x = keras.layers.GlobalAveragePooling1D(name='pool')(x)
    model = keras.Model(inputs, keras.layers.Dense(3, name='logits')(x))
    decayed = {v.path for v in models.decay_variables(model)}
    assert decayed == {'sep/depthwise_kernel', 'sep/pointwise_kernel', 'depth/kernel', 'up/kernel', 'einsum/kernel',
                       'logits/kernel'}
    assert len(model.trainable_variables) == 14  # the 6 kernels, 5 biases (one for sep), scale, gamma, beta

    mobile = models.create_model('keras:MobileNetV3Small', 10, (32, 32, 1))
    decay = models.decay_variables(mobile)
    backbone = mobile.layers[3]
    layers = [layer for layer in backbone.layers if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense,
                                                                      keras.layers.DepthwiseConv2D))]
    assert {id(v) for v in decay} == {id(layer.kernel) for layer in layers} | {id(mobile.get_layer('logits').kernel)}
    assert len(decay) == len(layers) + 1 and all(len(v.shape) in (2, 4) for v in decay)


def test_trainer_decays_extra_kernels_by_identity(fashion_mnist, tmp_path):
    """ReMixMatch's rotation head (an extra Dense) is decayed, its bias is not; the model's set is decay_variables."""
    import remixmatch
    settings = settings_lib.resolve(remixmatch.ReMixMatch.all_params(),
                                    dict(SMALL, K=1, filters=4, repeat=1, train_dir=str(tmp_path)))
    trainer = train.Trainer(remixmatch.ReMixMatch, settings)
    head = trainer.algorithm.rotation_head
    ids = [id(v) for v in trainer.decay_variables]
    assert ids == [id(v) for v in models.decay_variables(trainer.model)] + [id(head.kernel)]


def test_batch_norm_settings_reach_a_foreign_model():
    model = models.create_model('keras:MobileNetV3Small', 10, (32, 32, 3), bn_momentum=0.9, sync_bn=True)
    bns = [layer for layer in model._flatten_layers() if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(bns) > 10 and all(layer.momentum == 0.9 and layer.synchronized for layer in bns)


def test_mixed_precision_foreign_model_has_float32_logits():
    previous = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy('mixed_float16')
    try:
        model = models.create_model('keras:MobileNetV3Small', 10, (32, 32, 1), input_size=48)
        assert model.layers[-1].compute_dtype == 'float32'
        assert model.get_layer('input_scaling').compute_dtype == 'float32'
        assert model.layers[4].compute_dtype == 'float16'  # the backbone
        logits = model(np.zeros((2, 32, 32, 1), np.float32), training=False)
        assert keras.backend.standardize_dtype(logits.dtype) == 'float32' and tuple(logits.shape) == (2, 10)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    assert tuple(model.get_layer('resize').output.shape) == (None, 48, 48, 1)


# ---------------------------------------------------------------------------------------------- weights files

def test_weights_files_round_trip(tmp_path):
    source = models.create_model('keras:MobileNetV3Small', 10, (32, 32, 1))
    whole_h5, whole_keras = str(tmp_path / 'whole.weights.h5'), str(tmp_path / 'whole.keras')
    source.save_weights(whole_h5)
    source.save(whole_keras)
    backbone_h5 = str(tmp_path / 'backbone.weights.h5')
    source.layers[3].save_weights(backbone_h5)
    for path in (whole_h5, whole_keras):
        loaded = models.create_model('keras:MobileNetV3Small', 10, (32, 32, 1), weights=path)
        assert len(loaded.weights) == len(source.weights)
        for a, b in zip(source.weights, loaded.weights):
            np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
    other = models.create_model('keras:MobileNetV3Small', 4, (32, 32, 1), weights=backbone_h5)  # head of 4: no fit
    for a, b in zip(source.layers[3].weights, other.layers[3].weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
    wrn = models.create_model('wrn', 10, (32, 32, 1), filters=4, repeat=1)
    wrn.save_weights(str(tmp_path / 'wrn.weights.h5'))
    again = models.create_model('wrn', 10, (32, 32, 1), filters=4, repeat=1, weights=str(tmp_path / 'wrn.weights.h5'))
    assert all(np.array_equal(a.numpy(), b.numpy()) for a, b in zip(wrn.weights, again.weights))
    one_line_error(lambda: models.create_model('wrn', 10, (32, 32, 1), filters=8, repeat=1,
                                               weights=str(tmp_path / 'wrn.weights.h5')), 'fits neither')


def test_failed_downloads_are_one_line_and_leave_no_run_directory(fashion_mnist, tmp_path, monkeypatch):
    from keras.src.utils import file_utils

    def offline(fname=None, origin=None, *args, **kwargs):  # what keras.utils.get_file raises without a network
        raise Exception(f'URL fetch failure on {origin}: None -- [Errno -3] Temporary failure in name resolution')
    monkeypatch.setattr(file_utils, 'get_file', offline)
    message = one_line_error(lambda: fixmatch.FixMatch.run(**dict(MOBILE, weights='imagenet', train_dir=str(tmp_path))),
                             'could not download the ImageNet weights of keras.applications.MobileNetV3Small')
    assert 'storage.googleapis.com' in message and '--weights=PATH' in message
    import requests
    from keras_hub.src.utils import preset_utils

    def no_network(preset, path):
        raise requests.exceptions.ConnectionError(f"Failed to resolve 'api.kaggle.com' fetching {preset}/{path}")
    monkeypatch.setattr(preset_utils, 'get_file', no_network)
    message = one_line_error(lambda: fixmatch.FixMatch.run(**dict(SMALL, arch='hub:resnet_18_imagenet',
                                                                  train_dir=str(tmp_path))),
                             'could not download the KerasHub preset resnet_18_imagenet')
    assert 'hub:/path/to/folder' in message
    one_line_error(lambda: fixmatch.FixMatch.run(**dict(SMALL, arch='keras:Nope', train_dir=str(tmp_path))),
                   'keras.applications has no Nope')
    assert run_dirs(tmp_path) == [] and not glob.glob(str(tmp_path / '*' / '*'))


# ---------------------------------------------------------------------------------------------- training runs

def test_keras_application_trains_resumes_evaluates_exports(fashion_mnist, tmp_path, monkeypatch, op_determinism):
    """keras:MobileNetV3Small: a straight run, then from the same start a run stopped at step 6 and resumed from its
    checkpoint of step 4, end with the same bits; evaluate.py and export.py rebuild it."""
    settings = resolve(**MOBILE, deterministic=True, train_dir=str(tmp_path / 'runs'))
    trainer = train.Trainer(fixmatch.FixMatch, settings)
    initial = trainer.checkpoints.checkpoint.write(str(tmp_path / 'initial' / 'ckpt'))
    straight = trainer.train()
    assert straight['step'] == 8
    expected = trained_state(trainer.run_dir)
    train_again_until_killed(trainer, initial, 6, monkeypatch)
    assert trained_state(trainer.run_dir)['step/.ATTRIBUTES/VARIABLE_VALUE'] == 4
    resumed = trainer.train()
    actual = trained_state(trainer.run_dir)
    assert expected.keys() == actual.keys()
    assert not [k for k in expected if not np.array_equal(expected[k], actual[k])]
    assert resumed['accuracy'] == straight['accuracy']

    saved = json.load(open(os.path.join(trainer.run_dir, 'args.json')))
    assert saved['arch'] == 'keras:MobileNetV3Small' and saved['input_size'] == 32 and saved['weights'] == 'none'
    result = evaluate.evaluate(trainer.run_dir)
    assert result['step'] == 8 and result['images'] == 10000 and 0 <= result['accuracy'] <= 100
    _, _, model, _ = state.load_ema_model(trainer.run_dir)
    for variable, average in zip(model.trainable_variables, trainer.ema.averages):
        np.testing.assert_array_equal(variable.numpy(), average.numpy())
    out = export.export(trainer.run_dir, str(tmp_path / 'export'))
    from libml import data
    _, test = data.load_test_set('fashion_mnist')
    padded = np.asarray(test.images[:16])
    expected_probs = tf.nn.softmax(model(padded.astype(np.float32) * 2 / 255 - 1, training=False)).numpy()
    exported = keras.models.load_model(os.path.join(out, 'model.keras'))
    assert tuple(exported.input_shape) == (None, 28, 28, 1)
    np.testing.assert_allclose(exported.predict(padded[:, 2:30, 2:30], verbose=0), expected_probs, atol=1e-5)


def save_tiny_vit_preset(folder):
    import keras_hub
    backbone = keras_hub.models.ViTBackbone(image_shape=(16, 16, 3), patch_size=4, num_layers=1, num_heads=2,
                                            hidden_dim=8, mlp_dim=16)
    backbone.save_to_preset(str(folder))
    keras_hub.layers.ImageConverter(image_size=(16, 16), scale=1 / 255, offset=0.).save_to_preset(str(folder))
    return backbone


def test_kerashub_preset_folder_loads_and_trains(fashion_mnist, tmp_path):
    saved = save_tiny_vit_preset(tmp_path / 'vit')
    arch = f'hub:{tmp_path / "vit"}'
    model = models.create_model(arch, 10, (32, 32, 1), weights='preset')
    assert [layer.name for layer in model.layers][:4] == ['images', 'resize', 'to_rgb', 'input_scaling']
    assert tuple(model.get_layer('resize').output.shape) == (None, 16, 16, 1)  # the preset's own 16x16
    assert model.get_layer('pool').mode == 'class'  # ViT's class token
    scaling = model.get_layer('input_scaling')  # p / 255 = (x + 1) / 2
    np.testing.assert_allclose(scaling.matrix, 0.5 * np.eye(3), atol=1e-7)
    np.testing.assert_allclose(scaling.bias, 0.5, atol=1e-7)
    backbone = model.layers[4]
    assert len(backbone.weights) == len(saved.weights)
    for a, b in zip(saved.weights, backbone.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
    fresh = models.create_model(arch, 10, (32, 32, 1))  # --weights=none: the preset's architecture, new values
    assert not np.array_equal(fresh.layers[4].weights[0].numpy(), saved.weights[0].numpy())
    one_line_error(lambda: models.create_model(arch, 10, (32, 32, 1), input_size=32), 'takes 16x16 images only')
    result = fixmatch.FixMatch.run(**dict(SMALL, arch=arch, weights='preset', train_kimg=0.03125, report_kimg=0.03125,
                                          save_kimg=0.03125, train_dir=str(tmp_path / 'runs')))
    assert result['step'] == 4 and 0 <= result['accuracy'] <= 100
    assert evaluate.evaluate(result['run_dir'])['step'] == 4


def test_kerashub_feature_maps_and_token_means(tmp_path):
    """A 4-D ResNet feature map is average-pooled at the asked size; tokens without a class token are averaged."""
    import keras_hub
    resnet = keras_hub.models.ResNetBackbone(input_conv_filters=[64], input_conv_kernel_sizes=[3],
                                             stackwise_num_filters=[64, 16], stackwise_num_blocks=[1, 1],
                                             stackwise_num_strides=[1, 2], block_type='basic_block',
                                             use_pre_activation=False, image_shape=(None, None, 3))
    resnet.save_to_preset(str(tmp_path / 'resnet'))
    model = models.create_model(f'hub:{tmp_path / "resnet"}', 10, (32, 32, 3), input_size=24)
    assert isinstance(model.get_layer('pool'), keras.layers.GlobalAveragePooling2D)
    assert tuple(model.get_layer('resize').output.shape) == (None, 24, 24, 3)
    assert 'input_scaling' not in [layer.name for layer in model.layers]  # no ImageConverter: x as it is
    assert tuple(model.get_layer('pool').output.shape) == (None, 16)
    tokens = np.arange(24, dtype=np.float32).reshape(1, 3, 8)
    np.testing.assert_array_equal(backbones.TokenPooling('mean')(tokens).numpy(), tokens.mean(1))
    np.testing.assert_array_equal(backbones.TokenPooling('class')(tokens).numpy(), tokens[:, 0])
    vit = keras_hub.models.ViTBackbone(image_shape=(8, 8, 3), patch_size=4, num_layers=1, num_heads=1, hidden_dim=4,
                                       mlp_dim=8, use_class_token=False)
    vit.save_to_preset(str(tmp_path / 'vit'))
    assert models.create_model(f'hub:{tmp_path / "vit"}', 10, (32, 32, 3)).get_layer('pool').mode == 'mean'


BUILDER = '''
import keras


def build(nclass, input_shape):
    inputs = keras.Input(input_shape)
    x = keras.layers.Conv2D(8, 3, strides=2, name='conv')(inputs)
    x = keras.layers.BatchNormalization(name='norm')(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D(name='features')(x)
    return keras.Model(inputs, keras.layers.Dense(nclass, dtype='float32', name='out')(x), name='mine')


def flat(nclass, input_shape):
    inputs = keras.Input(input_shape)
    x = keras.layers.Flatten()(inputs)
    return keras.Model(inputs, keras.layers.Activation('linear')(keras.layers.Dense(nclass)(x)))
'''


def test_builder_module_and_run_model(fashion_mnist, tmp_path, monkeypatch):
    (tmp_path / 'mybuilder22.py').write_text(BUILDER)
    monkeypatch.chdir(tmp_path)
    model = models.create_model('mybuilder22:build', 10, (32, 32, 1), bn_momentum=0.9)
    assert model.get_layer('norm').momentum == 0.9
    features = models.with_features(model)  # no 'pool' layer: the input of the final Dense layer
    x = np.random.RandomState(0).uniform(-1, 1, (3, 32, 32, 1)).astype(np.float32)
    logits, pooled = features(x)
    np.testing.assert_allclose(pooled, keras.Model(model.inputs, model.get_layer('features').output)(x), atol=1e-6)
    np.testing.assert_allclose(logits, model(x), atol=1e-6)
    one_line_error(lambda: models.with_features(models.create_model('mybuilder22:flat', 10, (32, 32, 1))),
                   "no layer named 'pool'")
    by_path = fixmatch.FixMatch.run(**dict(SMALL, arch=f'{tmp_path / "mybuilder22.py"}:build', xla=True,
                                           train_kimg=0.03125, train_dir=str(tmp_path / 'path')))
    assert by_path['step'] == 4
    # run(model=keras.Model): saved as the run's model.keras; args.json says arch=model; evaluate.py rebuilds it
    given = models.create_model('mybuilder22:build', 10, (32, 32, 1))
    before = [v.numpy() for v in given.weights]
    result = fixmatch.FixMatch.run(model=given, **dict(SMALL, train_kimg=0.03125, train_dir=str(tmp_path / 'obj')))
    assert result['step'] == 4 and all(np.array_equal(a, v.numpy()) for a, v in zip(before, given.weights))
    run_dir = result['run_dir']
    assert json.load(open(os.path.join(run_dir, 'args.json')))['arch'] == 'model'
    assert os.path.basename(run_dir).startswith('FixMatch_archmodel_')
    assert os.path.exists(os.path.join(run_dir, 'model.keras'))
    evaluated = evaluate.evaluate(run_dir)
    assert evaluated['step'] == 4 and 0 <= evaluated['accuracy'] <= 100
    # a builder callable into the same run directory has the same variables: it resumes (nothing left to train)
    again = fixmatch.FixMatch.run(model=lambda nclass, shape: models.create_model('mybuilder22:build', nclass, shape),
                                  **dict(SMALL, train_kimg=0.03125, train_dir=str(tmp_path / 'obj')))
    assert again['step'] == 4
    one_line_error(lambda: fixmatch.FixMatch.run(model=models.create_model('wrn', 10, (32, 32, 1), filters=4,
                                                                           repeat=1),
                                                 **dict(SMALL, train_kimg=0.03125, train_dir=str(tmp_path / 'obj'))),
                   'was made with another model=')
    one_line_error(lambda: fixmatch.FixMatch.run(model=lambda nclass, shape: 3, **dict(SMALL, train_dir=str(tmp_path))),
                   'gave int, not a keras.Model')


# A builder model with two batch norms on one device and on two logical CPUs (MirroredStrategy), --sync_bn, on the
# same global batches: as test_train's test for the WRN, the first two steps agree to float rounding (measured 1e-7,
# 5e-7), the whole 30 steps within 0.2 of xe (0.05 measured), and the BN layers really are synchronized.
MIRRORED_BUILDER_SCRIPT = '''
import sys
sys.path.insert(0, {root!r})
import keras
import tensorflow as tf
cpu = tf.config.list_physical_devices('CPU')[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import fixmatch
from libml import settings, train
losses, worst = {{}}, {{}}
for devices in (1, 2):
    s = settings.resolve(fixmatch.FixMatch.all_params(), dict(
        {small!r}, arch={arch!r}, train_dir={train_dir!r} + str(devices), sync_bn=True, devicenum=devices, lr=0.1,
        train_kimg=1))
    trainer = train.Trainer(fixmatch.FixMatch, s)
    assert trainer.strategy.num_replicas_in_sync == devices
    bns = [l for l in trainer.model._flatten_layers() if isinstance(l, keras.layers.BatchNormalization)]
    assert [l.name for l in bns] == ['norm0', 'norm1'] and all(l.synchronized for l in bns), bns
    iterator = iter(trainer.train_dataset(0))
    losses[devices] = [{{k: float(v) for k, v in trainer.train_call(iterator, tf.constant(1, tf.int64)).items()}}
                       for _ in range(30)]
for step, tolerance in ((0, 1e-5), (1, 1e-3)):
    for key in ('losses/xe', 'losses/xeu', 'losses/wd', 'monitors/mask', 'monitors/lr'):
        one, two = losses[1][step][key], losses[2][step][key]
        worst[step] = max(worst.get(step, 0), abs(one - two) / max(1, abs(one)))
        assert abs(one - two) <= tolerance * max(1, abs(one)), (step, key, one, two)
drift = max(abs(a['losses/xe'] - b['losses/xe']) for a, b in zip(losses[1], losses[2]))
assert drift < 0.2, ('1 and 2 replicas drift apart', drift)  # about 0.05 at lr 0.1 after 30 steps
first, last = (sum(l['losses/xe'] for l in losses[2][i:i + 5]) / 5 for i in (0, 25))
assert last < 0.9 * first, ('two devices do not learn', first, last)  # about 2.50 -> 2.05 here
print('same losses', worst, drift, first, last)
'''


TWO_BN_BUILDER = '''
import keras


def build(nclass, input_shape):
    x = inputs = keras.Input(input_shape)
    for i, (filters, strides) in enumerate(((16, 1), (32, 2))):
        x = keras.layers.Conv2D(filters, 3, strides=strides, padding='same', use_bias=False)(x)
        x = keras.layers.ReLU()(keras.layers.BatchNormalization(name=f'norm{i}')(x))
    x = keras.layers.GlobalAveragePooling2D(name='pool')(x)
    return keras.Model(inputs, keras.layers.Dense(nclass, name='out')(x))
'''


def test_builder_model_on_two_logical_cpus_with_sync_bn_gives_the_same_loss_as_one(fashion_mnist, tmp_path):
    (tmp_path / 'mybuilder22r.py').write_text(TWO_BN_BUILDER)
    small = {k: v for k, v in SMALL.items() if k not in ('report_kimg', 'save_kimg', 'eval_size', 'keep_ckpt',
                                                         'train_kimg')}
    script = MIRRORED_BUILDER_SCRIPT.format(root=ROOT, small=small, arch=f'{tmp_path / "mybuilder22r.py"}:build',
                                            train_dir=str(tmp_path / 'run'))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3')
    done = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert 'same losses' in done.stdout, done.stdout
    print(done.stdout.strip().splitlines()[-1])
