#!/usr/bin/env python
"""The one-command accelerator check (bench/gpu.sh runs it): every speed figure of the README's GPU
table and a short real run, written to OUT/gpu.json and OUT/gpu.md.

  1. the full FixMatch WRN-28-2 step (64 + 448 + 448 images) at float32, mixed_bfloat16 and
     mixed_float16, each with and without --xla, against the bare model step (bench/train_step.py);
  2. batched CTAugment and RandAugment images/s at 32 and 96 px (bench/augment.py);
  3. the step rate on 1 replica and on all visible GPUs (bench/scaling.py);
  4. a FixMatch run on Fashion-MNIST with 40 labels whose schedule is sized from the measured
     float32 step rate to train for --run_seconds (3 minutes), and its EMA test accuracy.
Goal on one H100/H200: at least 100 full steps per second (the 2^20-step paper schedule in about
3 hours). --small runs everything at a tiny size (CPU smoke test: tests/test_bench.py).

  python bench/gpu.py --out=/tmp/gpu             # about 8 minutes on one GPU
  python bench/gpu.py --small --out=/tmp/gpu     # a few minutes on a CPU
"""
import json
import os
import re
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from libml import utils  # noqa: E402

utils.quiet_tensorflow()
from absl import flags  # noqa: E402

flags.DEFINE_string('out', 'gpu_bench', 'Folder of gpu.json, gpu.md and the logs of every part.')
flags.DEFINE_bool('small', False, 'Tiny model, batch and run: a smoke test that also runs on a CPU.')
flags.DEFINE_integer('run_seconds', 180, 'Training time of the Fashion-MNIST run (its kimg come from the step rate).')
flags.DEFINE_integer('timeout', 480, 'Seconds allowed to each part before it is stopped (its figures are then missing).')
FLAGS = flags.FLAGS

SETTINGS = 'float32,float32+xla,mixed_bfloat16,mixed_bfloat16+xla,mixed_float16,mixed_float16+xla'
PAPER = ['--filters=32', '--repeat=4', '--batch=64', '--uratio=7']
TINY = ['--filters=8', '--repeat=1', '--batch=8', '--uratio=2']


def run_part(name, args, out):
    """Runs one benchmark script (bench/<name>) with `args`; returns its JSON figures or None."""
    path = os.path.join(out, f'{name}.json')
    log = os.path.join(out, f'{name}.log')
    command = [sys.executable, os.path.join(ROOT, 'bench', name + '.py'), f'--json={path}', *args]
    start = time.time()
    try:
        with open(log, 'w') as f:
            done = subprocess.run(command, stdout=f, stderr=subprocess.STDOUT, timeout=FLAGS.timeout, cwd=ROOT)
        ok = done.returncode == 0
    except subprocess.TimeoutExpired:
        ok = False
    print(f'{name}: {"done" if ok else "FAILED (see " + log + ")"} in {time.time() - start:.0f} s', flush=True)
    return json.load(open(path)) if ok and os.path.exists(path) else None


def fashion_mnist_run(steps_per_second, out):
    """A FixMatch run sized to train about FLAGS.run_seconds at the measured rate; its accuracy line."""
    batch = 8 if FLAGS.small else 64
    kimg = max(0.05, steps_per_second * FLAGS.run_seconds * batch / 1024)
    every = kimg if FLAGS.small else kimg / 4  # --small: one evaluation (of 1,000 test images), at the end
    args = (TINY + ['--eval_size=1000'] if FLAGS.small else PAPER) + [
        '--dataset=fashion_mnist.1@40-1', f'--train_dir={os.path.join(out, "runs")}', f'--train_kimg={kimg:.3f}',
        f'--report_kimg={every:.3f}', f'--save_kimg={every:.3f}', '--ema=0.99', '--bn_momentum=0.99']
    start = time.time()
    try:
        done = subprocess.run([sys.executable, os.path.join(ROOT, 'fixmatch.py'), *args], capture_output=True,
                              text=True, timeout=FLAGS.timeout, cwd=ROOT)
        text = done.stdout + done.stderr
    except subprocess.TimeoutExpired as e:
        text = str(e.stdout or '') + str(e.stderr or '')
    with open(os.path.join(out, 'fashion_mnist_run.log'), 'w') as f:
        f.write(text)
    match = re.search(r'EMA test accuracy ([0-9.]+)%', text)
    return dict(kimg=kimg, seconds=time.time() - start, accuracy=float(match.group(1)) if match else None)


def markdown(result):
    """The README table of the figures."""
    lines = [f'Device: {result["device"]}', '', '| measurement | value |', '|---|---|']
    step = result.get('train_step') or {}
    for setting, rate in (step.get('steps_per_second') or {}).items():
        lines.append(f'| full FixMatch step, {setting} | {rate:.1f} steps/s ({step["images_per_step"] * rate:,.0f} img/s) |')
    if step.get('bare_ms'):
        lines.append(f'| bare model step, float32 | {1000 / step["bare_ms"]:.1f} steps/s |')
    for key, rate in sorted(((result.get('augment') or {}).get('images_per_second') or {}).items()):
        lines.append(f'| batched {key} | {rate:,.0f} img/s |')
    scaling = result.get('scaling') or {}
    for replicas, rate in zip(scaling.get('replicas', []), scaling.get('steps_per_second', [])):
        lines.append(f'| full step on {replicas} replica(s) | {rate:.1f} steps/s |')
    run = result.get('fashion_mnist_run') or {}
    if run:
        lines.append(f'| FixMatch, Fashion-MNIST 40 labels, {run["kimg"]:.1f} kimg in {run["seconds"]:.0f} s | '
                     f'{run["accuracy"]}% EMA test accuracy |')
    return '\n'.join(lines) + '\n'


def device_name():
    try:
        names = subprocess.run(['nvidia-smi', '--query-gpu=name', '--format=csv,noheader'], capture_output=True,
                               text=True, timeout=30).stdout.strip().splitlines()
    except (OSError, subprocess.TimeoutExpired):
        names = []
    return ', '.join(names) if names else f'CPU ({os.cpu_count()} cores)'


def main(argv):
    del argv
    out = os.path.abspath(FLAGS.out)
    os.makedirs(out, exist_ok=True)
    model = TINY if FLAGS.small else PAPER
    steps = ['--steps=2', '--repeats=1'] if FLAGS.small else ['--steps=30', '--repeats=1']
    settings = 'float32,mixed_bfloat16' if FLAGS.small else SETTINGS
    result = dict(device=device_name(), small=FLAGS.small)
    result['train_step'] = run_part('train_step', model + steps + [f'--settings={settings}'], out)
    result['augment'] = run_part('augment', ['--sizes=32,96'] + (['--batch=8', '--repeats=1'] if FLAGS.small else []),
                                 out)
    # --small: weak-only views in the scaling part (tracing CTAugment twice under MirroredStrategy is
    # most of its CPU time; CTAugment's step is timed by train_step above)
    result['scaling'] = run_part('scaling', model + (['--steps=1', '--augment=d.d.d'] if FLAGS.small else ['--steps=20']),
                                 out)
    rate = ((result['train_step'] or {}).get('steps_per_second') or {}).get('float32', 1.0)
    result['fashion_mnist_run'] = fashion_mnist_run(rate, out)
    utils.write_json(os.path.join(out, 'gpu.json'), result)
    table = markdown(result)
    with utils.atomic_write(os.path.join(out, 'gpu.md')) as tmp:
        with open(tmp, 'w') as f:
            f.write(table)
    print(table)
    best = max(((result['train_step'] or {}).get('steps_per_second') or {'none': 0.0}).items(), key=lambda kv: kv[1])
    print(f'best full FixMatch step: {best[0]} {best[1]:.1f} steps/s (goal on one H100/H200: 100)')


if __name__ == '__main__':
    utils.run(main)
