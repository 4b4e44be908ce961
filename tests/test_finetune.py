"""Fine-tuning settings (issue 22): --lr_warmup_kimg (USB's warm-up), --layer_decay (the depth of every
variable, libml/finetune.py, and the per-variable learning rates of the optimizers) and --optimizer=adamw
(torch.optim.AdamW), checked against hand-computed values; XLA and two replicas give the same update; a
short Fashion-MNIST run with all three. The stopped-and-resumed run is tests/test_resume.py's 'finetune'."""
import json
import math
import os
import subprocess
import sys
import textwrap
import types

import keras
import numpy as np
import pytest
import tensorflow as tf

import fixmatch
from conftest import ROOT
from libml import finetune
from libml import models
from libml import settings as settings_lib
from libml import state
from libml import train
from libml import utils
from test_resume import tiny_data, tiny_data_root  # noqa: F401 (fixtures)
from test_train import TINY

COS = 7 * math.pi / 16


# ---- warm-up

def usb_factor(step, total, warmup):
    """USB's get_cosine_schedule_with_warmup lambda (semilearn/core/utils/build.py), written out."""
    if step < warmup:
        return step / max(1, warmup)
    return max(0.0, math.cos(COS * (step - warmup) / max(1, total - warmup)))


def test_warmup_schedule_at_hand_computed_steps():
    def lr(schedule, step, **kw):
        return float(state.warmup_lr(schedule, 0.03, tf.constant(step, tf.int64), 100, 10, **kw))
    # warm-up: 0.03 * t/10
    assert lr('cosine', 0) == 0.0
    assert lr('cosine', 5) == pytest.approx(0.015, rel=1e-6)
    assert lr('cosine', 9) == pytest.approx(0.027, rel=1e-6)
    # then the cosine over the 90 remaining steps: t = 10 -> lr, t = 55 -> lr cos(7 pi/32), t = 100 -> lr cos(7 pi/16)
    assert lr('cosine', 10) == pytest.approx(0.03, rel=1e-6)
    assert lr('cosine', 55) == pytest.approx(0.03 * math.cos(7 * math.pi / 32), rel=1e-6)
    assert lr('cosine', 100) == pytest.approx(0.0058527, rel=1e-4)
    for step in (0, 3, 10, 11, 40, 99, 100):
        assert lr('cosine', step) == pytest.approx(0.03 * usb_factor(step, 100, 10), rel=1e-6, abs=1e-9)
    # other schedules after the same warm-up: constant 0.03; linear 0.03 -> 0.01 over steps 10..100
    assert (lr('constant', 5), lr('constant', 50)) == (pytest.approx(0.015), pytest.approx(0.03))
    assert lr('linear', 55, lr_end=0.01) == pytest.approx(0.02, rel=1e-6)
    assert lr('linear', 100, lr_end=0.01) == pytest.approx(0.01, rel=1e-6)


def trainer_stub(step, total, warmup, schedule='cosine', lr=0.03):
    return types.SimpleNamespace(step=tf.Variable(step, dtype=tf.int64), steps_total=total, steps_warmup=warmup,
                                 settings=settings_lib.Settings(lr_schedule=schedule, lr=lr, lr_end=0.,
                                                                lr_warmup_kimg=1. if warmup else 0.))


def test_no_warmup_is_the_schedule_bit_for_bit():
    for schedule in ('cosine', 'constant', 'linear'):
        for step in (0, 1, 17, 511, 1024):
            got = train.Trainer.learning_rate(trainer_stub(step, 1024, 0, schedule)).numpy()
            before = state.scheduled_lr(schedule, 0.03, tf.cast(tf.constant(step, tf.int64), tf.float32) / 1024)
            assert got.tobytes() == before.numpy().tobytes()
    got = train.Trainer.learning_rate(trainer_stub(5, 1024, 10)).numpy()  # with a warm-up: 0.03 * 5/10
    assert got == pytest.approx(0.015, rel=1e-6)


# ---- layer depths

def test_layer_depths_of_the_wrn():
    model = models.create_model('wrn', 10, (32, 32, 3), filters=4, repeat=2, scales=2)  # 4 residual blocks
    depths = finetune.layer_depths(model)
    expected = {'stem_conv': 0, 'stage0_block0': 1, 'stage0_block1': 2, 'stage1_block0': 3, 'stage1_block1': 4,
                'head_bn': 5, 'logits': 5}
    assert set(depths) == {v.path for v in model.trainable_variables}
    for path, depth in depths.items():
        prefix = [p for p in expected if path.startswith(p + '_') or path.startswith(p + '/')]
        assert len(prefix) == 1 and depth == expected[prefix[0]], (path, depth)
    assert depths['stage1_block0_shortcut/kernel'] == 3 and depths['stage0_block1_2_bn/gamma'] == 2
    scales = finetune.lr_scales(model, model.trainable_variables, 0.5)
    by_path = dict(zip((v.path for v in model.trainable_variables), scales))
    assert (by_path['stem_conv/kernel'], by_path['stage0_block1_conv1/kernel'], by_path['logits/kernel']) == \
        (0.5 ** 5, 0.5 ** 3, 1.0)


def tiny_vit():
    """A KerasHub ViT backbone built from its config (no download): 32 px, patches of 8, 2 blocks, width 16,
    with a dense head on the class token."""
    keras_hub = pytest.importorskip('keras_hub')
    backbone = keras_hub.models.ViTBackbone(image_shape=(32, 32, 3), patch_size=8, num_layers=2, num_heads=2,
                                            hidden_dim=16, mlp_dim=32)
    inputs = keras.Input((32, 32, 3))
    logits = keras.layers.Dense(10, name='head')(backbone(inputs)[:, 0])
    return backbone, keras.Model(inputs, logits)


VIT_BLOCK = ('ln_1/gamma', 'ln_1/beta', 'mha/query/kernel', 'mha/query/bias', 'mha/key/kernel', 'mha/key/bias',
             'mha/value/kernel', 'mha/value/bias', 'mha/attention_output/kernel', 'mha/attention_output/bias',
             'ln_2/gamma', 'ln_2/beta', 'mlp/dense_1/kernel', 'mlp/dense_1/bias', 'mlp/dense_2/kernel',
             'mlp/dense_2/bias')


def test_layer_depths_of_a_keras_hub_vit():
    backbone, model = tiny_vit()
    expected = {f'vit_patching_and_embedding/{name}': 0 for name in (
        'class_token', 'patch_embedding/kernel', 'patch_embedding/bias', 'position_embedding/embeddings')}
    for block in (1, 2):
        expected.update({f'vit_encoder/transformer_block_{block}/{name}': block for name in VIT_BLOCK})
    expected.update({'vit_encoder/ln/gamma': 2, 'vit_encoder/ln/beta': 2})  # USB: the final norm joins the last block
    assert finetune.layer_depths(backbone) == expected
    assert finetune.layer_depths(model) == {**expected, 'head/kernel': 3, 'head/bias': 3}
    scales = dict(zip((v.path for v in model.trainable_variables),
                      finetune.lr_scales(model, model.trainable_variables, 0.5)))
    assert (scales['vit_patching_and_embedding/class_token'], scales['vit_encoder/transformer_block_1/ln_1/gamma'],
            scales['vit_encoder/ln/beta'], scales['head/kernel']) == (0.125, 0.25, 0.5, 1.0)


def test_layer_depths_without_block_names():
    """Each weighted layer its own depth in topological order; a norm joins the layer before it."""
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(2, 3, name='a')(inputs)
    x = keras.layers.BatchNormalization(name='a_norm')(x)
    x = keras.layers.Conv2D(2, 3, name='b')(keras.layers.ReLU(name='relu')(x))
    x = keras.layers.Dense(3, name='c')(keras.layers.Flatten(name='flat')(x))
    depths = finetune.layer_depths(keras.Model(inputs, x))
    assert depths == {'a/kernel': 0, 'a/bias': 0, 'a_norm/gamma': 0, 'a_norm/beta': 0, 'b/kernel': 1, 'b/bias': 1,
                      'c/kernel': 2, 'c/bias': 2}


# ---- the optimizers: one step on hand-made gradients

def make(optimizer, variables, decayed, scales, wd=0.1, **extra):
    s = settings_lib.Settings(optimizer=optimizer, wd=wd, precision='float32', momentum=0.9, nesterov=True, **extra)
    return state.make_optimizer(s, lambda: tf.constant(0.1), variables, decayed, scales)


def test_sgd_steps_with_the_layer_learning_rates():
    """Keras's Nesterov SGD from zero momentum moves w by -(1 + 0.9) lr g; each variable with lr * 0.5^(D - d)."""
    _, model = tiny_vit()
    variables = model.trainable_variables
    scales = finetune.lr_scales(model, variables, 0.5)
    before = [v.numpy().copy() for v in variables]
    optimizer = make('sgd', variables, models.decay_variables(model), scales)
    assert isinstance(optimizer, state.ScaledSGD)
    optimizer.apply_gradients([(tf.fill(v.shape, 2.0), v) for v in variables])
    depth = finetune.layer_depths(model)
    for v, b in zip(variables, before):
        expected = b - 1.9 * 0.1 * 0.5 ** (3 - depth[v.path]) * 2.0
        np.testing.assert_allclose(v.numpy(), expected, rtol=1e-6, atol=1e-7, err_msg=v.path)


def torch_adamw(w, grads, lr, wd, betas=(0.9, 0.999), eps=1e-8):
    """torch.optim.AdamW's update (its documented algorithm), in float64, for each gradient in turn."""
    m = v = 0.0
    for t, g in enumerate(grads, 1):
        w = w * (1 - lr * wd)
        m = betas[0] * m + (1 - betas[0]) * g
        v = betas[1] * v + (1 - betas[1]) * g * g
        w = w - lr / (1 - betas[0] ** t) * m / (math.sqrt(v) / math.sqrt(1 - betas[1] ** t) + eps)
    return w


def test_adamw_is_torchs_adamw():
    kernel, bias = tf.Variable([1.0, -2.0]), tf.Variable([0.5])
    optimizer = make('adamw', [kernel, bias], [kernel], None)
    assert isinstance(optimizer, state.TorchAdamW)
    for g in (0.5, -1.0, 0.25):
        optimizer.apply_gradients([(tf.constant([g, g]), kernel), (tf.constant([g]), bias)])
    # first step by hand: w (1 - 0.1 * 0.1) - 0.1 / 0.1 * 0.05 / (0.5 + 1e-8) = 0.99 - 0.1 = 0.89
    assert torch_adamw(1.0, [0.5], 0.1, 0.1) == pytest.approx(0.89, abs=1e-7)
    np.testing.assert_allclose(kernel.numpy(), [torch_adamw(w, (0.5, -1.0, 0.25), 0.1, 0.1) for w in (1.0, -2.0)],
                               rtol=1e-6)
    np.testing.assert_allclose(bias.numpy(), [torch_adamw(0.5, (0.5, -1.0, 0.25), 0.1, 0.0)], rtol=1e-6)  # no decay
    # the reference's adam (post-step decay, Keras's eps) differs
    reference = tf.Variable([1.0, -2.0])
    adam = make('adam', [reference], [reference], None)
    adam.apply_gradients([(tf.constant([0.5, 0.5]), reference)])
    assert reference.numpy()[0] == pytest.approx((1.0 - 0.1) * (1 - 0.01), abs=1e-6)  # 0.891, not 0.89


def test_adamw_layer_learning_rates_scale_the_decay_too():
    _, model = tiny_vit()
    variables = model.trainable_variables
    decayed = models.decay_variables(model)
    decayed_ids = {id(v) for v in decayed}
    scales = finetune.lr_scales(model, variables, 0.5)
    before = [v.numpy().astype(np.float64) for v in variables]
    optimizer = make('adamw', variables, decayed, scales, wd=0.5)
    optimizer.apply_gradients([(tf.fill(v.shape, -0.3), v) for v in variables])
    depth = finetune.layer_depths(model)
    for v, b in zip(variables, before):
        lr = 0.1 * 0.5 ** (3 - depth[v.path])
        expected = torch_adamw(b, [-0.3], lr, 0.5 if id(v) in decayed_ids else 0.0)
        np.testing.assert_allclose(v.numpy(), expected, rtol=1e-5, atol=1e-7, err_msg=v.path)
    # the decayed variables are the kernels (USB: every >= 2-D weight but pos_embed and cls_token)
    assert {v.path for v in decayed} == {p for p in depth if p.endswith('kernel')}


def test_reference_adam_decays_with_the_layer_learning_rate():
    w = tf.Variable([1.0])
    optimizer = make('adam', [w], [w], [0.25], wd=0.2)
    optimizer.apply_gradients([(tf.constant([0.5]), w)])
    # Keras Adam step with lr 0.025 (|update| = lr at the first step, eps aside), then w (1 - 0.025 * 0.2)
    assert w.numpy()[0] == pytest.approx((1.0 - 0.025) * (1 - 0.025 * 0.2), abs=1e-6)


DISTRIBUTED = textwrap.dedent('''
    import sys, json
    sys.path.insert(0, {root!r})
    import numpy as np, tensorflow as tf
    cpu = tf.config.list_physical_devices('CPU')[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from libml import settings, state
    out = {{}}
    grads = [np.array([0.5, -1.0], np.float32), np.array([0.25], np.float32)]
    for optimizer in ('sgd', 'adamw'):
        s = settings.Settings(optimizer=optimizer, wd=0.1, precision='float32', momentum=0.9, nesterov=True)
        for mode in ('eager', 'xla', 'mirrored'):
            strategy = tf.distribute.MirroredStrategy(['/cpu:0', '/cpu:1']) if mode == 'mirrored' \\
                else tf.distribute.get_strategy()
            with strategy.scope():
                a, b = tf.Variable([1.0, 2.0]), tf.Variable([3.0])
                opt = state.make_optimizer(s, lambda: tf.constant(0.1), [a, b], [a], [0.25, 1.0])
            def step():
                share = 2 if mode == 'mirrored' else 1  # gradients are summed over the replicas
                opt.apply_gradients([(tf.constant(grads[0] / share), a), (tf.constant(grads[1] / share), b)])
            if mode == 'mirrored':
                call = tf.function(lambda: strategy.run(step))
            else:
                call = tf.function(step, jit_compile=True) if mode == 'xla' else step
            for _ in range(3):
                call()
            out[optimizer + '/' + mode] = [float(x) for x in np.concatenate([a.numpy(), b.numpy()])]
    print(json.dumps(out))
''')


def test_layer_rates_under_xla_and_two_replicas():
    """The same three steps eagerly, as one XLA program (--xla) and on two logical CPUs (MirroredStrategy)."""
    done = subprocess.run([sys.executable, '-c', DISTRIBUTED.format(root=ROOT)], capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3'))
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.splitlines()[-1])
    for optimizer in ('sgd', 'adamw'):
        eager = out[optimizer + '/eager']
        for mode in ('xla', 'mirrored'):
            np.testing.assert_allclose(out[f'{optimizer}/{mode}'], eager, rtol=1e-6, err_msg=(optimizer, mode))
    # adamw: a (scale 0.25, decayed) and b (scale 1, not decayed) against the torch formula
    expected = [torch_adamw(1.0, (0.5,) * 3, 0.025, 0.1), torch_adamw(2.0, (-1.0,) * 3, 0.025, 0.1),
                torch_adamw(3.0, (0.25,) * 3, 0.1, 0.0)]
    np.testing.assert_allclose(out['adamw/eager'], expected, rtol=1e-6)


# ---- settings

def test_settings_are_checked_before_anything_is_written(tiny_data, tmp_path):  # noqa: F811
    params = fixmatch.FixMatch.all_params()
    for bad in (0.0, 1.5, -0.5):
        with pytest.raises(utils.UserError,
                           match=r'--layer_decay=.* is out of range: --layer_decay must be in \(0, 1\]'):
            settings_lib.resolve(params, dict(layer_decay=bad))
    with pytest.raises(utils.UserError, match='--lr_warmup_kimg=-1 is out of range'):
        settings_lib.resolve(params, dict(lr_warmup_kimg=-1.))
    with pytest.raises(utils.UserError, match="--optimizer='lamb' is not one of sgd, adam, adamw"):
        settings_lib.resolve(params, dict(optimizer='lamb'))
    values = dict(TINY, dataset='tinyfaults.1@40-1', train_dir=str(tmp_path), train_kimg=0.25, lr_warmup_kimg=0.25)
    with pytest.raises(utils.UserError, match=r'--lr_warmup_kimg=0.25 \(16 steps\) is not shorter than '
                                              r'--train_kimg=0.25 \(16 steps\); use a shorter warm-up'):
        train.Trainer(fixmatch.FixMatch, settings_lib.resolve(params, values))
    assert not os.listdir(tmp_path)


# ---- a short run

def test_short_fashion_mnist_run_with_layer_decay_warmup_and_adamw(fashion_mnist, tmp_path):
    """16 steps of 16 labeled images with all three: the learning rates of the run's optimizer, the logged
    warm-up, a finite loss and accuracy."""
    params = fixmatch.FixMatch.all_params()
    values = dict(TINY, dataset='fashion_mnist.1@40-1', train_dir=str(tmp_path), train_kimg=0.25, report_kimg=0.25,
                  save_kimg=0.25, layer_decay=0.5, lr_warmup_kimg=0.125, optimizer='adamw', lr=0.002, wd=0.05)
    trainer = train.Trainer(fixmatch.FixMatch, settings_lib.resolve(params, values))
    assert 'layer_decay0.5' in trainer.run_dir and 'optimizeradamw' in trainer.run_dir
    assert trainer.steps_warmup == 8 and isinstance(trainer.optimizer, state.TorchAdamW)
    scales = dict(zip((v.path for v in trainer.trainable), trainer.optimizer.per_variable.lr_scales))
    # WRN-10-1 at 28 px: stem, 3 blocks, head: D = 4
    assert (scales['stem_conv/kernel'], scales['stage0_block0_conv1/kernel'], scales['stage2_block0_conv2/bias'],
            scales['logits/kernel']) == (0.5 ** 4, 0.5 ** 3, 0.5, 1.0)
    assert float(trainer.learning_rate()) == 0.0
    result = trainer.train()
    assert result['step'] == 16 and math.isfinite(result['accuracy'])
    trainer.step.assign(4)
    assert float(trainer.learning_rate()) == pytest.approx(0.001, rel=1e-6)  # 0.002 * 4/8
