"""Speed and scale settings: CTAugment runs exact without --deterministic (same run twice, exact resume),
--precision, --xla and --steps_per_call."""
import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

import fixmatch
from conftest import ROOT
from libml import settings as settings_lib
from libml import train
from test_train import TINY

DETERMINISTIC_SCRIPT = textwrap.dedent('''
    import json, sys
    sys.path.insert(0, {root!r})
    import numpy as np
    import tensorflow as tf
    import fixmatch
    from libml import train
    from test_train import TINY, trained_state
    values = dict(TINY, dataset='fashion_mnist.1@40-1', augment='d.d.cta', deterministic=False, train_kimg=0.5,
                  report_kimg=0.5, save_kimg=0.25)
    straight = fixmatch.FixMatch.run(train_dir={root_a!r}, **values)
    again = fixmatch.FixMatch.run(train_dir={root_b!r}, **values)
    check = train.Trainer.check_finite
    def kill_at_20(self):
        check(self)
        if int(self.step.numpy()) >= 20:
            raise KeyboardInterrupt
    train.Trainer.check_finite = kill_at_20
    try:
        fixmatch.FixMatch.run(train_dir={root_c!r}, **values)
    except KeyboardInterrupt:
        pass
    train.Trainer.check_finite = check
    resumed = fixmatch.FixMatch.run(train_dir={root_c!r}, **values)
    states = [trained_state(r['run_dir']) for r in (straight, again, resumed)]
    different = sorted(name for name in states[0] for other in states[1:]
                       if not np.array_equal(states[0][name], other[name]))
    print('DIFFERENT ' + json.dumps(different))
    print('RATES_MOVED ' + str(bool(np.any(states[0]['cta/rates/.ATTRIBUTES/VARIABLE_VALUE'] < 1))))
''')


def test_ctaugment_runs_and_resume_are_identical_without_deterministic(fashion_mnist, tmp_path):
    """The strong views of step t come from the rates after step t-1 inside the step: no lag that varies
    from run to run, so without --deterministic two runs and a killed-and-resumed run end bit-identical
    (on CPU, whose kernels are deterministic; --deterministic adds deterministic GPU kernels)."""
    script = DETERMINISTIC_SCRIPT.format(root=ROOT, root_a=str(tmp_path / 'a'), root_b=str(tmp_path / 'b'),
                                         root_c=str(tmp_path / 'c'))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3', PYTHONPATH=os.path.join(ROOT, 'tests'))
    done = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = dict(line.split(' ', 1) for line in done.stdout.splitlines() if line.startswith(('DIFFERENT', 'RATES')))
    assert json.loads(lines['DIFFERENT']) == []  # weights, EMA, optimizer, BN statistics, CTAugment rates
    assert lines['RATES_MOVED'] == 'True'


def tiny_trainer(tmp_path, **overrides):
    values = dict(TINY, dataset='fashion_mnist.1@40-1', train_dir=str(tmp_path), train_kimg=1)
    values.update(overrides)
    return train.Trainer(fixmatch.FixMatch, settings_lib.resolve(fixmatch.FixMatch.all_params(), values))


def run_steps(trainer, steps, per_call=1):
    iterator = iter(trainer.train_dataset(0))
    logs = [trainer.train_call(iterator, tf.constant(per_call, tf.int64)) for _ in range(steps // per_call)]
    return [{k: float(v) for k, v in l.items()} for l in logs]


@pytest.mark.parametrize('precision', ['mixed_bfloat16', 'mixed_float16'])
def test_mixed_precision_trains_with_float32_variables_and_logits(fashion_mnist, tmp_path, precision):
    trainer = tiny_trainer(tmp_path, precision=precision)
    try:
        assert keras.mixed_precision.global_policy().name == precision
        assert all(v.dtype == 'float32' for v in trainer.model.trainable_variables)
        assert trainer.model.output.dtype == 'float32'
        assert isinstance(trainer.optimizer, keras.optimizers.LossScaleOptimizer) == (precision == 'mixed_float16')
        logs = run_steps(trainer, 6)
        assert all(np.isfinite(l['losses/xe']) for l in logs)
        assert logs[-1]['losses/xe'] < logs[0]['losses/xe']
    finally:
        keras.mixed_precision.set_global_policy('float32')


def test_xla_gives_the_losses_of_the_plain_step(fashion_mnist, tmp_path):
    plain = run_steps(tiny_trainer(tmp_path / 'plain', augment='d.d.rac'), 3)
    compiled = run_steps(tiny_trainer(tmp_path / 'xla', augment='d.d.rac', xla=True), 3)
    for a, b in zip(plain, compiled):
        for key in ('losses/xe', 'losses/xeu', 'losses/wd', 'monitors/mask'):
            assert b[key] == pytest.approx(a[key], rel=2e-3, abs=1e-4), key


def test_several_steps_per_call_equal_one_step_per_call(fashion_mnist, tmp_path):
    one = tiny_trainer(tmp_path / 'one', augment='d.d.rac')
    run_steps(one, 4, per_call=1)
    four = tiny_trainer(tmp_path / 'four', augment='d.d.rac', steps_per_call=4)
    run_steps(four, 4, per_call=4)
    assert int(one.step.numpy()) == int(four.step.numpy()) == 4
    for a, b in zip(one.model.trainable_variables, four.model.trainable_variables):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)
