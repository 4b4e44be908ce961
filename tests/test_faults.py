"""Every fault a clean outcome: broken checkpoints fall back to older ones, bad settings are one line
and write nothing, full and read-only disks are one line naming the path, a run directory is locked
while a process trains in it, TensorBoard shows each step once after a resume."""
import contextlib
import errno
import glob
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

import fixmatch
from conftest import ROOT
from libml import checkpoints
from libml import rundir
from libml import settings as settings_lib
from libml import train
from libml import utils
from test_resume import TINY_DATASET, find_run_dir, tiny_data, tiny_data_root  # noqa: F401 (fixtures)
from test_train import TINY

# 16 steps, a checkpoint every 4 (ckpt-4 ... ckpt-16), summaries every step, one evaluation at the end.
FAULT = dict(TINY, dataset=TINY_DATASET, augment='d.d.d', train_kimg=0.25, report_kimg=0.25, save_kimg=0.0625)


def new_trainer(train_dir, cls=fixmatch.FixMatch, **overrides):
    values = {**FAULT, 'train_dir': str(train_dir), **overrides}
    return train.Trainer(cls, settings_lib.resolve(cls.all_params(), values))


def checkpoint_values(prefix):
    reader = tf.train.load_checkpoint(prefix)
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
            if not name.startswith('_CHECKPOINTABLE_OBJECT_GRAPH')}


def assert_holds(trainer, prefix, tmp_path):
    """Every variable of the trainer has the value it has in checkpoint `prefix` (nothing half-restored)."""
    written = trainer.checkpoints.checkpoint.write(str(tmp_path / 'now' / 'ckpt'))
    now, expected = checkpoint_values(written), checkpoint_values(prefix)
    assert now.keys() == expected.keys()
    assert [k for k in now if not np.array_equal(now[k], expected[k])] == []


@pytest.fixture(scope='module')
def finished_run(tiny_data_root, tmp_path_factory):
    """A finished 16-step FixMatch run with checkpoints at steps 4, 8, 12 and 16."""
    train_dir = tmp_path_factory.mktemp('finished')
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv('ML_DATA', tiny_data_root)
        fixmatch.FixMatch.run(**FAULT, train_dir=str(train_dir))
    return str(train_dir)


@pytest.fixture
def run_copy(finished_run, tiny_data, tmp_path):
    """(train_dir, run_dir, tf dir) of a private copy of the finished run."""
    shutil.copytree(finished_run, tmp_path / 'copy')
    run_dir = find_run_dir(tmp_path / 'copy')
    return str(tmp_path / 'copy'), run_dir, os.path.join(run_dir, 'tf')


# ---------------------------------------------------------------------------------------------
# Broken checkpoints.

@pytest.mark.parametrize('cut', ['empty', 'half', '16 bytes short', 'flipped byte'])
def test_broken_data_file_falls_back_to_the_previous_checkpoint(run_copy, tmp_path, caplog, cut):
    train_dir, run_dir, tf_dir = run_copy
    data = os.path.join(tf_dir, 'ckpt-16.data-00000-of-00001')
    size = os.path.getsize(data)
    with open(data, 'r+b') as f:
        if cut == 'flipped byte':
            f.seek(size // 2)
            byte = f.read(1)
            f.seek(size // 2)
            f.write(bytes([byte[0] ^ 0xff]))
        else:
            f.truncate({'empty': 0, 'half': size // 2, '16 bytes short': size - 16}[cut])
    trainer = new_trainer(train_dir)
    with caplog.at_level(logging.WARNING):
        assert trainer.restore() == 12
    lines = [r.getMessage() for r in caplog.records if 'ckpt-16' in r.getMessage()]
    assert len(lines) == 1 and 'Cannot read checkpoint' in lines[0] and \
        ('Read less bytes' in lines[0] or 'Checksum does not match' in lines[0]), lines
    assert_holds(trainer, os.path.join(tf_dir, 'ckpt-12'), tmp_path)
    assert sorted(os.listdir(os.path.join(tf_dir, 'unreadable'))) == ['ckpt-16.data-00000-of-00001',
                                                                     'ckpt-16.index']
    assert tf.train.latest_checkpoint(tf_dir).endswith('ckpt-12')  # the state file follows
    if cut == 'half':  # and training goes on from there
        assert trainer.train()['step'] == 16 and os.path.exists(os.path.join(tf_dir, 'ckpt-16.index'))


def test_deleted_or_broken_index_falls_back(run_copy, tmp_path, caplog):
    train_dir, run_dir, tf_dir = run_copy
    os.remove(os.path.join(tf_dir, 'ckpt-16.index'))
    with open(os.path.join(tf_dir, 'ckpt-12.index'), 'r+b') as f:
        f.truncate(100)
    trainer = new_trainer(train_dir)
    with caplog.at_level(logging.INFO):
        assert trainer.restore() == 8
    messages = ' | '.join(r.getMessage() for r in caplog.records)
    assert 'ckpt-16.data-00000-of-00001' in messages  # the data file without index: removed as a leftover
    assert 'Cannot read checkpoint' in messages and 'ckpt-12' in messages
    assert not os.path.exists(os.path.join(tf_dir, 'ckpt-16.data-00000-of-00001'))
    assert_holds(trainer, os.path.join(tf_dir, 'ckpt-8'), tmp_path)


@pytest.mark.parametrize('state', ['lost', 'corrupt', 'points to a deleted checkpoint'])
def test_lost_or_corrupt_state_file_still_resumes_from_the_newest_checkpoint(run_copy, tmp_path, caplog, state):
    train_dir, run_dir, tf_dir = run_copy
    path = os.path.join(tf_dir, 'checkpoint')
    if state == 'lost':
        os.remove(path)
    elif state == 'corrupt':
        with open(path, 'wb') as f:
            f.write(b'\x00\xffmodel_checkpoint_path: "ckpt-4\n{{{')
    else:
        with open(path, 'w') as f:
            f.write('model_checkpoint_path: "ckpt-99"\nall_model_checkpoint_paths: "ckpt-99"\n')
    trainer = new_trainer(train_dir)
    with caplog.at_level(logging.WARNING):
        assert trainer.restore() == 16
    assert_holds(trainer, os.path.join(tf_dir, 'ckpt-16'), tmp_path)
    assert [os.path.basename(p) for p in tf.train.get_checkpoint_state(tf_dir).all_model_checkpoint_paths] == \
        ['ckpt-4', 'ckpt-8', 'ckpt-12', 'ckpt-16']  # rewritten from the index files
    if state != 'points to a deleted checkpoint':
        assert any('state file' in r.getMessage() for r in caplog.records)


def test_leftovers_of_a_killed_save_are_removed_at_start(run_copy, caplog):
    train_dir, run_dir, tf_dir = run_copy
    os.makedirs(os.path.join(tf_dir, 'ckpt-20_temp'))
    with open(os.path.join(tf_dir, 'ckpt-20_temp', 'part-00000-of-00001.data-00000-of-00001'), 'wb') as f:
        f.write(b'half a checkpoint')
    for name in ('checkpoint.tmp1a2b3c', 'ckpt-24.data-00000-of-00001'):
        open(os.path.join(tf_dir, name), 'w').close()
    open(os.path.join(run_dir, 'stats', '.epochs.jsonl.x1y2.tmp'), 'w').close()
    trainer = new_trainer(train_dir)
    assert not os.path.exists(os.path.join(run_dir, 'stats', '.epochs.jsonl.x1y2.tmp'))
    with caplog.at_level(logging.INFO):
        assert trainer.restore() == 16
    assert sorted(f for f in os.listdir(tf_dir) if not f.startswith('events')) == [
        'checkpoint', *(f'ckpt-{n}.{kind}' for n in (12, 16, 4, 8) for kind in ('data-00000-of-00001', 'index'))]
    assert any('ckpt-20_temp' in r.getMessage() for r in caplog.records)


def test_no_readable_checkpoint_starts_from_step_0_and_says_so(run_copy, caplog):
    train_dir, run_dir, tf_dir = run_copy
    for n in (4, 8, 12, 16):
        with open(os.path.join(tf_dir, f'ckpt-{n}.data-00000-of-00001'), 'r+b') as f:
            f.truncate(10)
    trainer = new_trainer(train_dir)
    with caplog.at_level(logging.WARNING):
        assert trainer.restore() == 0
    messages = [r.getMessage() for r in caplog.records]
    assert sum('Cannot read checkpoint' in m for m in messages) == 4
    assert any('No readable checkpoint' in m and 'starts from step 0' in m for m in messages)
    assert int(trainer.step.numpy()) == 0 and checkpoints.find(tf_dir) == []


def test_checkpoint_of_another_model_is_never_trained_from(run_copy, tmp_path):
    """A checkpoint that reads but does not fit: the older one is restored fully after it; when none
    fits, a UserError (variables may be half assigned: no training from them)."""
    train_dir, run_dir, tf_dir = run_copy
    trainer = new_trainer(train_dir)
    other = tf.train.Checkpoint(model=tf.Variable(np.zeros(3, np.float32)), step=tf.Variable(7, dtype=tf.int64))
    for name in ('ckpt-16', 'ckpt-12'):
        checkpoints.remove_checkpoint(os.path.join(tf_dir, name))
    for n in (12, 16):
        other.write(os.path.join(tf_dir, f'ckpt-{n}'))
    assert trainer.restore() == 8
    assert_holds(trainer, os.path.join(tf_dir, 'ckpt-8'), tmp_path)
    assert sorted(os.listdir(os.path.join(tf_dir, 'unreadable'))) == sorted(
        f'ckpt-{n}.{kind}' for n in (12, 16) for kind in ('data-00000-of-00001', 'index'))
    for n in (4, 8):
        checkpoints.remove_checkpoint(os.path.join(tf_dir, f'ckpt-{n}'))
    other.write(os.path.join(tf_dir, 'ckpt-16'))
    with pytest.raises(utils.UserError, match=r'no checkpoint of .* fits this model \(ckpt-16: .*\); resume with'):
        new_trainer(train_dir).restore()


# ---------------------------------------------------------------------------------------------
# Bad settings: one line naming flag, value and range, for every algorithm; nothing written.

REJECTED = [
    (dict(batch=0), '--batch=0 is out of range: --batch must be >= 1'),
    (dict(batch=-4), '--batch=-4 is out of range: --batch must be >= 1'),
    (dict(uratio=-1), '--uratio=-1 is out of range: --uratio must be >= 1'),
    (dict(filters=0), '--filters=0 is out of range: --filters must be >= 1'),
    (dict(confidence=2), '--confidence=2 is out of range: --confidence must be in (0, 1]'),
    (dict(confidence=0), '--confidence=0 is out of range: --confidence must be in (0, 1]'),
    (dict(train_kimg=0), '--train_kimg=0 is out of range: --train_kimg must be > 0'),
    (dict(lr=-1), '--lr=-1 is out of range: --lr must be > 0'),
    (dict(lr=float('nan')), '--lr=nan is out of range: --lr must be > 0'),
    (dict(ema=1), '--ema=1 is out of range: --ema must be in [0, 1)'),
    (dict(cta_decay=1), '--cta_decay=1 is out of range: --cta_decay must be in (0, 1)'),
    (dict(keep_ckpt=0), '--keep_ckpt=0 is out of range'),
    (dict(batch=2.5), '--batch=2.5 is not an integer'),
    (dict(augment='d.d.zz'), "bad --augment='d.d.zz': expected L.W.S"),
    (dict(train_kimg=0.001), '--train_kimg=0.001 is less than one step of --batch=16 (0.015625 kimg)'),
    (dict(CAP=True, mnar_estimate='moment'), '--CAP and --mnar_estimate both reweight'),  # debias.check
    (dict(dataset='nosuch.1@40-1'), "unknown dataset 'nosuch'"),
]


@pytest.mark.parametrize('bad,message', REJECTED, ids=[str(b) for b, _ in REJECTED])
def test_rejected_setting_is_one_line_and_writes_nothing(tiny_data, tmp_path, bad, message):
    with pytest.raises(utils.UserError, match=re.escape(message)) as caught:
        fixmatch.FixMatch.run(**{**FAULT, 'train_dir': str(tmp_path / 'runs'), **bad})
    assert '\n' not in str(caught.value)
    assert not os.path.exists(tmp_path / 'runs')


def entry_algorithms():
    import importlib
    out = []
    for path in sorted(glob.glob(os.path.join(ROOT, '*.py'))):
        module = importlib.import_module(os.path.basename(path)[:-3])
        out += [v for v in vars(module).values() if isinstance(v, type) and issubclass(v, train.Algorithm)
                and v is not train.Algorithm and v.__module__ == module.__name__]
    return out


def test_every_numeric_setting_of_every_algorithm_has_a_range_and_it_is_enforced():
    for cls in entry_algorithms():
        params = cls.all_params()
        settings_lib.resolve(params, {})  # the defaults pass
        settings_lib.resolve(params, dict(local=True))
        for name, p in params.items():
            if isinstance(p.default, bool) or not isinstance(p.default, (int, float)) or p.choices:
                continue
            assert isinstance(p.check, settings_lib.Range), (cls.__name__, name)
            r = p.check
            outside = [r.low - (0 if r.low_open else (1 if isinstance(p.default, int) else 1e-3))] \
                if r.low is not None else []
            outside += [r.high + (0 if r.high_open else 1)] if r.high is not None else []
            for value in outside + [float('inf')] * isinstance(p.default, float):
                with pytest.raises(utils.UserError, match=rf'^--{name}=\S+ is out of range: --{name} must be '):
                    settings_lib.resolve(params, {name: value})
        if 'augment' in params:
            with pytest.raises(utils.UserError, match='bad --augment'):
                settings_lib.resolve(params, dict(augment='d.d'))
    expected = dict(batch='>= 1', filters='>= 1', repeat='>= 1', scales='>= 0', lr='> 0', train_kimg='> 0',
                    report_kimg='> 0', save_kimg='> 0', ema='in [0, 1)', bn_momentum='in [0, 1)', wd='>= 0',
                    keep_ckpt='>= 1', steps_per_call='>= 1', eval_batch='>= 1', eval_size='>= 0', cta_depth='>= 1', cta_th='in [0, 1]',
                    cta_decay='in (0, 1)', uratio='>= 1', confidence='in (0, 1]', wu='>= 0')
    params = fixmatch.FixMatch.all_params()
    assert {name: str(params[name].check) for name in expected} == expected
    import mixmatch
    import remixmatch
    import uda
    import pseudo_label
    assert str(mixmatch.MixMatch.params['T'].check) == '> 0' and str(mixmatch.MixMatch.params['nu'].check) == '>= 1'
    assert str(remixmatch.ReMixMatch.params['beta'].check) == '> 0' and str(remixmatch.ReMixMatch.params['K'].check) \
        == '>= 1'
    assert str(uda.UDA.params['T'].check) == '> 0'
    assert str(pseudo_label.PseudoLabel.params['threshold'].check) == 'in (0, 1]'


def cli(args, env=None, script='fixmatch.py', timeout=300):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3', **(env or {}))
    command = [sys.executable, *(['-c', script] if '\n' in script else [script]), *args]
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# Two logical CPUs: a batch that does not split over them is refused before anything is written.
TWO_DEVICES = textwrap.dedent('''
    import sys
    sys.path.insert(0, {root!r})
    import tensorflow as tf
    cpu = tf.config.list_physical_devices('CPU')[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import fixmatch
    from libml import train
    train.main(fixmatch.FixMatch)
''').format(root=ROOT)


def test_command_line_errors_are_one_line_and_debug_shows_the_traceback(tiny_data, tmp_path):
    runs = str(tmp_path / 'runs')
    common = [f'--{k}={v}' for k, v in FAULT.items()] + [f'--train_dir={runs}']
    jobs = {'bad batch': cli(common + ['--batch=0']),
            'debug': cli(common + ['--augment=d.d.zz', '--debug']),
            'env debug': cli(common + ['--lr=-1'], env=dict(FIXMATCH_DEBUG='1')),
            'replicas': cli(common + ['--batch=15', '--devicenum=2'], script=TWO_DEVICES)}
    done = {}
    for name, job in jobs.items():
        out, err = job.communicate(timeout=300)
        done[name] = (job.returncode, err.strip().splitlines())
    status, lines = done['bad batch']
    assert status == 2 and lines[-1] == 'error: --batch=0 is out of range: --batch must be >= 1', lines
    assert not any('Traceback' in line for line in lines)
    for name in ('debug', 'env debug'):
        status, lines = done[name]
        assert status == 2 and 'Traceback (most recent call last):' in lines, (name, lines[-5:])
        assert lines[-1].startswith(('error: bad --augment=', 'error: --lr=-1 is out of range')), lines[-1]
    status, lines = done['replicas']
    assert status == 2 and lines[-1] == 'error: --batch=15 does not split evenly over 2 devices; use a multiple ' \
                                        'of 2', lines
    assert not os.path.exists(runs)


def test_corrupt_image_of_a_user_folder_is_one_clean_line(tmp_path):
    from PIL import Image
    for k, name in enumerate(('cat', 'dog')):
        os.makedirs(tmp_path / 'images' / name)
        for i in range(3):
            Image.fromarray(np.full((8, 8, 3), 40 * i + k, np.uint8)).save(tmp_path / 'images' / name / f'{i}.png')
    bad = tmp_path / 'images' / 'dog' / 'broken.png'
    bad.write_bytes(b'\x89PNG\r\n\x1a\n' + b'not an image' * 4)
    env = {k: v for k, v in os.environ.items() if k != 'TQDM_DISABLE'}  # with the progress bar
    env.update(ML_DATA=str(tmp_path / 'data'), TF_CPP_MIN_LOG_LEVEL='3')
    done = subprocess.run([sys.executable, 'scripts/create_datasets.py', '--name=pets',
                           f'--from_dir={tmp_path / "images"}'], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 2
    lines = [line for line in done.stderr.replace('\r', '\n').splitlines() if 'error' in line]
    assert lines == [f'error: cannot read image {bad} (Invalid PNG. Failed to initialize decoder.); replace it with '
                     f'a valid PNG/JPEG/GIF/BMP or delete it'], done.stderr[-2000:]
    assert utils.one_line('x ({{function_node __wrapped__A_device_/job:l/replica:0}} bad. [Op:A] name: b)\nmore') == \
        'x (bad.); more'


# ---------------------------------------------------------------------------------------------
# Read-only and full disks.

@contextlib.contextmanager
def tmpfs(path, size='4m'):
    """A small tmpfs at `path` (root with CAP_SYS_ADMIN only; skips elsewhere)."""
    os.makedirs(path, exist_ok=True)
    done = subprocess.run(['mount', '-t', 'tmpfs', '-o', f'size={size}', 'tmpfs', str(path)], capture_output=True)
    if done.returncode:
        pytest.skip(f'cannot mount a tmpfs here ({done.stderr.decode().strip()})')
    try:
        yield str(path)
    finally:
        subprocess.run(['umount', '-l', str(path)], capture_output=True)


def read_only_ways():
    ways = ['file where a folder must go', 'read-only mount']
    if os.geteuid() != 0:  # root ignores permission bits
        ways.append('chmod 555')
    return ways


@pytest.mark.parametrize('way', read_only_ways())
def test_read_only_train_dir_is_one_line_naming_the_path(tiny_data, tmp_path, finished_run, way):
    if way == 'file where a folder must go':
        train_dir = tmp_path / 'runs'
        train_dir.write_text('a file, not a folder')
        expected = rf'cannot create the run directory {re.escape(str(train_dir))}/\S+: a file is where a folder ' \
                   rf'must go; move that file away or choose another --train_dir'
    elif way == 'chmod 555':
        train_dir = tmp_path / 'runs'
        train_dir.mkdir()
        train_dir.chmod(0o555)
        expected = rf'cannot create the run directory {re.escape(str(train_dir))}/\S+: permission denied'
    else:
        train_dir = tmp_path / 'mount'
        stack = contextlib.ExitStack()
        stack.enter_context(tmpfs(train_dir))
        shutil.copytree(finished_run, train_dir, dirs_exist_ok=True)  # a run to resume, now read-only
        subprocess.run(['mount', '-o', 'remount,ro', str(train_dir)], check=True)
        expected = rf'cannot create the lock file {re.escape(str(train_dir))}/\S+/lock: the file system is ' \
                   rf'read-only; make it writable'
    try:
        with pytest.raises(utils.UserError, match=expected) as caught:
            fixmatch.FixMatch.run(**{**FAULT, 'train_dir': str(train_dir)})
        assert '\n' not in str(caught.value)
    finally:
        if way == 'read-only mount':
            stack.close()
        elif way == 'chmod 555':
            train_dir.chmod(0o755)


def fill(folder):
    """Fills the file system of `folder` up to the last byte."""
    with open(os.path.join(folder, 'filler'), 'wb') as f:
        with contextlib.suppress(OSError):
            while True:
                f.write(b'\0' * 4096)
                f.flush()


def test_full_disk_keeps_the_previous_checkpoint_and_no_partial_files(tiny_data, tmp_path, monkeypatch):
    with tmpfs(tmp_path / 'small', size='4m') as disk:
        check = train.Trainer.check_finite

        def fill_at_6(self):
            check(self)
            if int(self.step.numpy()) == 6:
                fill(disk)
        monkeypatch.setattr(train.Trainer, 'check_finite', fill_at_6)
        full = rf'{re.escape(disk)}/\S+: the disk is full; free some space or choose another --train_dir, then ' \
               rf'run again \(it resumes\)'
        with pytest.raises(utils.UserError, match=full) as caught:
            fixmatch.FixMatch.run(**{**FAULT, 'train_dir': disk})
        assert '\n' not in str(caught.value)
        run_dir = find_run_dir(disk)
        tf_dir = os.path.join(run_dir, 'tf')
        assert [n for n, _ in checkpoints.find(tf_dir)] == [4]
        assert not glob.glob(os.path.join(tf_dir, 'ckpt-8*')) and not glob.glob(os.path.join(run_dir, '**', '.*.tmp'))
        checkpoints.read_all(os.path.join(tf_dir, 'ckpt-4'))
        os.remove(os.path.join(disk, 'filler'))
        monkeypatch.setattr(train.Trainer, 'check_finite', check)
        assert fixmatch.FixMatch.run(**{**FAULT, 'train_dir': disk})['step'] == 16  # space again: it resumes


def test_failed_checkpoint_write_removes_its_partial_files(run_copy, monkeypatch):
    """The merge of a checkpoint's shards (TensorFlow's last file step) fails as on a full disk: the
    shard written in ckpt-N_temp/ is removed, the previous checkpoints stay."""
    from tensorflow.python.checkpoint import functional_saver
    train_dir, run_dir, tf_dir = run_copy
    for n in (12, 16):
        checkpoints.remove_checkpoint(os.path.join(tf_dir, f'ckpt-{n}'))
    trainer = new_trainer(train_dir)  # resumes at step 8
    written = []

    def full_disk(prefixes, prefix, **kwargs):
        written.extend(glob.glob(os.path.join(tf_dir, 'ckpt-*_temp', '*')))
        raise tf.errors.ResourceExhaustedError(None, None, f'{prefix.numpy().decode()}.index; No space left on device')
    monkeypatch.setattr(functional_saver.gen_io_ops, 'merge_v2_checkpoints', full_disk)
    with pytest.raises(utils.UserError, match=r'^cannot save checkpoint ckpt-12: \S+: the disk is full; .* \(the '
                                              r'previous checkpoint ckpt-8 is kept\)$'):
        trainer.train()
    assert written and not os.path.exists(os.path.dirname(written[0]))
    assert [n for n, _ in checkpoints.find(tf_dir)] == [8, 4]
    assert not glob.glob(os.path.join(tf_dir, 'ckpt-12*'))
    checkpoints.read_all(os.path.join(tf_dir, 'ckpt-8'))


def test_disk_error_texts():
    assert rundir.disk_error(OSError(errno.ENOSPC, 'No space left on device', '/x/y'), '/x') == \
        '/x/y: the disk is full; free some space or choose another --train_dir, then run again (it resumes)'
    assert rundir.disk_error(tf.errors.ResourceExhaustedError(None, None, 'OOM when allocating tensor'), '/x') is None
    assert rundir.disk_error(tf.errors.UnknownError(None, None, 'x; Read-only file system'), '/x').startswith(
        '/x: the file system is read-only; make it writable')
    assert rundir.disk_error(ValueError('No space left on device'), '/x') is None


# ---------------------------------------------------------------------------------------------
# The lock of a run directory.

HOLDER = textwrap.dedent('''
    import sys
    sys.path.insert(0, {root!r})
    sys.path.insert(0, {tests!r})
    import fixmatch
    from libml import settings, train
    from test_faults import FAULT
    trainer = train.Trainer(fixmatch.FixMatch, settings.resolve(fixmatch.FixMatch.all_params(),
                                                                dict(FAULT, train_dir={train_dir!r})))
    print('locked', flush=True)
    sys.stdin.read()  # holds the run directory until the test closes stdin
''')


def test_second_process_on_a_run_directory_refuses_then_takes_over_when_it_is_gone(tiny_data, tmp_path, caplog):
    train_dir = str(tmp_path / 'runs')
    holder = subprocess.Popen([sys.executable, '-c', HOLDER.format(root=ROOT, tests=os.path.join(ROOT, 'tests'),
                                                                   train_dir=train_dir)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3'))
    try:
        assert holder.stdout.readline().strip() == 'locked', holder.stderr.read()[-3000:]
        with pytest.raises(utils.UserError, match=rf'^run directory {re.escape(train_dir)}/\S+ is in use by process '
                                                  rf'{holder.pid} on host {re.escape(socket.gethostname())} \(see '
                                                  rf'\S+/lock\); '
                                                  rf'wait until it ends or stop it, or choose another --train_dir$'):
            new_trainer(train_dir)
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    with caplog.at_level(logging.INFO):  # the holder is gone: its lock is free
        trainer = new_trainer(train_dir)
    assert any(f'Taking over the lock of process {holder.pid}' in r.getMessage() for r in caplog.records)
    with open(os.path.join(trainer.run_dir, 'lock')) as f:
        assert f.read().split()[:2] == [str(os.getpid()), socket.gethostname()]


def test_stale_lock_is_taken_over_and_the_lock_is_released_after_training(finished_run, run_copy, caplog):
    train_dir, run_dir, tf_dir = run_copy
    gone = subprocess.Popen(['true'])
    gone.wait()
    with open(os.path.join(run_dir, 'lock'), 'w') as f:
        f.write(f'{gone.pid} {socket.gethostname()} 2024-01-01T00:00:00\n')
    with caplog.at_level(logging.INFO):
        trainer = new_trainer(train_dir)
    assert any(f'Taking over the lock of process {gone.pid}' in r.getMessage() for r in caplog.records)
    lock = rundir.RunLock(run_dir)
    assert lock.key in rundir.RunLock.held
    trainer.train()  # nothing left to train
    assert lock.key not in rundir.RunLock.held  # released: another process may take it
    import fcntl
    with open(os.path.join(run_dir, 'lock')) as f:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_only_the_chief_locks_and_writes(tiny_data, tmp_path, monkeypatch):
    from libml import devices
    monkeypatch.setattr(devices, 'is_chief', lambda strategy: False)
    trainer = new_trainer(tmp_path / 'runs')
    assert trainer.lock is None and not os.path.exists(tmp_path / 'runs')


# ---------------------------------------------------------------------------------------------
# TensorBoard after resumes.

def scalar_steps(tf_dir, tag, purge):
    from tensorboard.backend.event_processing import event_accumulator
    events = event_accumulator.EventAccumulator(tf_dir, size_guidance={event_accumulator.TENSORS: 0},
                                                purge_orphaned_data=purge).Reload()
    return [e.step for e in events.Tensors(tag)]


def test_tensorboard_shows_each_step_once_after_two_resumes(tiny_data, tmp_path, monkeypatch):
    check = train.Trainer.check_finite
    trainer = new_trainer(tmp_path)  # each train() resumes as a new process would, with a new events file
    for stop in (6, 11, None):  # stopped after ckpt-4 and after ckpt-8, then to the end
        def stop_at(self, stop=stop):
            check(self)
            if stop and int(self.step.numpy()) >= stop:
                raise KeyboardInterrupt
        monkeypatch.setattr(train.Trainer, 'check_finite', stop_at)
        with pytest.raises(KeyboardInterrupt) if stop else contextlib.nullcontext():
            trainer.train()
    tf_dir = trainer.checkpoint_dir
    assert len(rundir.event_files(tf_dir)) == 3
    for purge in (False, True):  # raw events, and what TensorBoard's loader shows
        for tag in ('losses/xe', 'monitors/lr', 'monitors/mask'):
            assert scalar_steps(tf_dir, tag, purge) == list(range(1, 17)), (tag, purge)
        assert scalar_steps(tf_dir, 'accuracy', purge) == [16]


def test_drop_events_after_keeps_earlier_steps_and_ends_a_truncated_file(tmp_path):
    writer = tf.summary.create_file_writer(str(tmp_path))
    with writer.as_default():
        for step in range(1, 11):
            tf.summary.scalar('loss', float(step), step=step)
    writer.close()
    path, = rundir.event_files(str(tmp_path))
    with open(path, 'ab') as f:
        f.write(b'\x10\x00\x00')  # the start of a record a killed writer did not finish
    assert rundir.drop_events_after([path], 6) == 4
    assert scalar_steps(str(tmp_path), 'loss', False) == [1, 2, 3, 4, 5, 6]
    assert rundir.drop_events_after([path], 6) == 0
    assert rundir.drop_events_after([path], 0) > 0 and not os.path.exists(path)
