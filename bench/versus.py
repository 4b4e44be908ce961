#!/usr/bin/env python
"""The full FixMatch step of this checkout against another checkout of the project (e.g. an older
main), side by side in one run: each tree's bench/train_step.py runs in turn, --rounds times
alternating, with the same flags; the best ms/step of each counts (the machine is shared and noisy).

  git worktree add /tmp/main_before <commit>
  python bench/versus.py --baseline_tree=/tmp/main_before --rounds=3 -- --filters=16 --repeat=2 --batch=32
The flags after -- go to both train_step.py runs (model, batch, --steps, --settings, ...). The
baseline tree reads its own $ML_DATA split files if --baseline_ml_data is given. The last line
prints this tree's speed as a ratio of the baseline's (> 1: faster).
"""
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from libml import utils  # noqa: E402

from absl import flags  # noqa: E402

flags.DEFINE_string('baseline_tree', None, 'Folder of the other checkout (its bench/train_step.py is timed).')
flags.DEFINE_string('baseline_ml_data', None, '$ML_DATA for the baseline tree (default: the same as this one).')
flags.DEFINE_integer('rounds', 3, 'Alternating rounds; the best of each tree counts.')
FLAGS = flags.FLAGS
FULL_LINE = re.compile(r'^full FixMatch step, (\S+)\s+([0-9.]+)\s+([0-9.]+)$')


def full_step_ms(tree, args, ml_data):
    """{setting: ms per full step} printed by `tree`/bench/train_step.py."""
    env = dict(os.environ, ML_DATA=ml_data) if ml_data else dict(os.environ)
    done = subprocess.run([sys.executable, os.path.join(tree, 'bench', 'train_step.py'), *args], cwd=tree, env=env,
                          capture_output=True, text=True)
    if done.returncode:
        raise utils.UserError(f'{tree}/bench/train_step.py failed: {done.stderr.strip().splitlines()[-1:]}')
    return {m.group(1): float(m.group(3)) for m in map(FULL_LINE.match, done.stdout.splitlines()) if m}


def main(argv):
    if not FLAGS.baseline_tree or not os.path.isfile(os.path.join(FLAGS.baseline_tree, 'bench', 'train_step.py')):
        raise utils.UserError('--baseline_tree must be a checkout of this project (with bench/train_step.py), e.g. '
                              'git worktree add /tmp/main_before main')
    args = argv[1:]
    best = {'baseline': {}, 'this': {}}
    for round_number in range(FLAGS.rounds):
        for name, tree, ml_data in (('baseline', FLAGS.baseline_tree, FLAGS.baseline_ml_data), ('this', ROOT, None)):
            for setting, ms in full_step_ms(tree, args, ml_data).items():
                best[name][setting] = min(ms, best[name].get(setting, float('inf')))
            print(f'round {round_number + 1}: {name} {best[name]}', flush=True)
    ratios = []
    for setting in best['this']:
        if setting in best['baseline']:
            ratio = best['baseline'][setting] / best['this'][setting]
            print(f'{setting}: baseline {best["baseline"][setting]:.1f} ms/step, this {best["this"][setting]:.1f} '
                  f'ms/step')
            ratios.append(f'{setting} {ratio:.2f}x')
    print('this tree vs baseline (full step speed): ' + ', '.join(ratios))


if __name__ == '__main__':
    utils.run(main)
