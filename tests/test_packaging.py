"""Packaging and setup: pyproject.toml against requirements*.txt and the modules on disk, an install with pip
(`--target`, no network), scripts/setup.sh and .ci/run, and every configs/*.cfg parsed by absl."""
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import tomllib

import pytest

from conftest import ROOT
from libml import commands

PYPROJECT = tomllib.load(open(os.path.join(ROOT, 'pyproject.toml'), 'rb'))
CONFIGS = sorted(glob.glob(os.path.join(ROOT, 'configs', '*.cfg')))


def requirement_lines(name):
    lines = [line.split('#')[0].strip() for line in open(os.path.join(ROOT, name))]
    return [line for line in lines if line]


def algorithm_modules():
    """Top-level modules of the checkout that are training entry scripts."""
    return [module for module, _ in commands.entry_scripts(ROOT)]


def tool_scripts():
    return sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, 'scripts', '*.py'))
                  if "__name__ == '__main__'" in open(p).read())


def test_dependencies_match_the_requirement_files():
    assert PYPROJECT['project']['dependencies'] == requirement_lines('requirements.txt')
    assert PYPROJECT['project']['optional-dependencies']['test'] == requirement_lines('requirements-test.txt')
    tensorflow = [r for r in requirement_lines('requirements.txt') if r.startswith('tensorflow==')]
    assert len(tensorflow) == 1
    gpu = tensorflow[0].replace('tensorflow==', 'tensorflow[and-cuda]==')
    assert PYPROJECT['project']['optional-dependencies']['gpu'] == [gpu] == requirement_lines('requirements-gpu.txt')
    for name in ('matplotlib', 'tensorflow-datasets', 'tqdm'):
        assert any(r.startswith(name) for r in requirement_lines('requirements.txt')), name
    assert not any(r.startswith(('pytest', 'Pillow')) for r in requirement_lines('requirements.txt'))


def test_every_module_and_tool_is_installed_with_a_command():
    scripts = PYPROJECT['project']['scripts']
    modules = PYPROJECT['tool']['setuptools']['py-modules']
    found = algorithm_modules()
    assert 'fixmatch' in found and 'fully_supervised' in found
    for name in found:  # a new NAME.py with train.main(...) needs these three entries
        assert name in modules, f'add "{name}" to py-modules in pyproject.toml'
        assert scripts.get(name) == f'libml.commands:{name}', f'add {name} = "libml.commands:{name}" to pyproject.toml'
        assert name in commands.ALGORITHMS, f'add {name!r} to libml/commands.py ALGORITHMS'
    assert sorted(modules) == found  # nothing listed that is missing
    assert sorted(commands.TOOLS) == tool_scripts()
    for tool in commands.TOOLS:
        assert scripts[f'fixmatch-{tool.replace("_", "-")}'] == f'libml.commands:{tool}'
        assert callable(getattr(commands, tool))
    assert PYPROJECT['tool']['setuptools']['package-dir'] == {commands.TOOLS_PACKAGE: 'scripts'}
    assert set(PYPROJECT['tool']['setuptools']['packages']) == {'libml', 'cta', commands.TOOLS_PACKAGE}


def test_every_algorithm_is_in_the_readme_table_and_the_accuracy_benchmark():
    """The README's table under "## Algorithms" has a row per entry script; bench/accuracy.py finds them all."""
    readme = open(os.path.join(ROOT, 'README.md')).read()
    section = readme.split('\n## Algorithms\n', 1)[1]
    table = re.search(r'^\| script \|.*?\n\n', section, re.M | re.S).group(0)  # the section's first table
    rows = re.findall(r'^\| `(\w+)\.py` \|', table, re.M)
    missing = [name for name in algorithm_modules() if name not in rows]
    assert not missing, f'add a row for {missing} to the table under "## Algorithms" in README.md'
    assert sorted(set(rows)) == sorted(rows) and set(rows) <= set(algorithm_modules()), rows
    code = 'import json, sys; sys.path.insert(0, "bench"); import accuracy; print(json.dumps(accuracy.ALGORITHMS))'
    done = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env=dict(os.environ, PYTHONPATH=ROOT))
    assert done.returncode == 0, done.stderr[-3000:]
    benchmarked = json.loads(done.stdout.splitlines()[-1])
    assert [module for module, _ in benchmarked] == algorithm_modules()
    for module, cls in benchmarked:
        assert re.search(rf'^class {cls}\(train\.Algorithm\)', open(os.path.join(ROOT, module + '.py')).read(), re.M)


def test_pip_install_makes_everything_importable_from_any_folder(tmp_path):
    pytest.importorskip('setuptools', minversion='64')
    source = tmp_path / 'source'
    source.mkdir()
    for name in ('pyproject.toml', 'README.md', 'libml', 'cta', 'scripts', *[m + '.py' for m in algorithm_modules()]):
        copy = shutil.copytree if os.path.isdir(os.path.join(ROOT, name)) else shutil.copy
        copy(os.path.join(ROOT, name), source / name)
    target = tmp_path / 'site'
    done = subprocess.run([sys.executable, '-m', 'pip', 'install', '-q', '--no-deps', '--no-build-isolation',
                           '--no-index', '--target', str(target), str(source)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    elsewhere = tmp_path / 'elsewhere'
    elsewhere.mkdir()
    env = dict(os.environ, PYTHONPATH=str(target))
    check = textwrap.dedent(f'''
        import importlib, json
        from fixmatch import FixMatch
        names = {algorithm_modules() + ['libml', 'cta', 'libml.tfds_data', 'libml.figures', 'fixmatch_scripts']!r}
        print(json.dumps({{n: importlib.import_module(n).__file__ for n in names}}))
    ''')
    done = subprocess.run([sys.executable, '-c', check], capture_output=True, text=True, cwd=elsewhere, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    files = json.loads(done.stdout.splitlines()[-1])
    assert all(path.startswith(str(target)) for path in files.values()), files
    tools = sorted(os.path.basename(p)[:-3] for p in glob.glob(str(target / 'fixmatch_scripts' / '*.py')))
    assert set(commands.TOOLS) <= set(tools)
    done = subprocess.run([str(target / 'bin' / 'fixmatch'), '--helpshort'], capture_output=True, text=True,
                          cwd=elsewhere, env=env, timeout=300)
    assert '--dataset' in done.stdout and '--confidence' in done.stdout, done.stderr[-3000:]


def test_setup_script_and_ci():
    setup = open(os.path.join(ROOT, 'scripts', 'setup.sh')).read()
    assert 'python3-venv' in setup and 'dataset-fashion-mnist' in setup and 'requirements-test.txt' in setup
    assert 'id -u' in setup and 'sudo' in setup  # root without sudo, or a user with sudo
    ci = open(os.path.join(ROOT, '.ci', 'run')).read()
    readme = open(os.path.join(ROOT, 'README.md')).read()
    test_command = re.search(r'^(\.venv/bin/python -m pytest .*tests)$', readme, re.MULTILINE).group(1)
    assert 'scripts/setup.sh' in ci and test_command in ci.splitlines()  # .ci/run runs the README's test command
    done = subprocess.run(['bash', '-n', os.path.join(ROOT, 'scripts', 'setup.sh')], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    done = subprocess.run(['bash', os.path.join(ROOT, 'scripts', 'setup.sh'), '--nosuch'], capture_output=True,
                          text=True)
    assert done.returncode == 2 and 'unknown option --nosuch' in done.stderr


# ---- configs/

def config_script(path):
    """The entry script of a config, from its usage line `python SCRIPT.py --flagfile=configs/NAME.cfg`."""
    match = re.search(r'python (\w+)\.py --flagfile=configs/' + re.escape(os.path.basename(path)), open(path).read())
    assert match, f'{path}: the header needs the line: python SCRIPT.py --flagfile=configs/{os.path.basename(path)}'
    return match.group(1)


def test_configs_are_one_flag_per_line_with_a_header():
    assert len(CONFIGS) >= 8
    names = {os.path.basename(p) for p in CONFIGS}
    for name in ('fixmatch_cifar10_40.cfg', 'fixmatch_cifar10_250.cfg', 'fixmatch_cifar10_4000.cfg',
                 'fixmatch_cifar100_400.cfg', 'fixmatch_svhn_40.cfg', 'fixmatch_stl10_1000.cfg',
                 'cadr_cifar10_lt20.cfg', 'defixmatch_cifar10_4000.cfg'):
        assert name in names
    for path in CONFIGS:
        lines = open(path).read().splitlines()
        assert lines[0].startswith('# '), path
        flag_lines = [line for line in lines if line.strip() and not line.startswith('#')]
        assert flag_lines and all(re.fullmatch(r'--\w+(=\S+)?', line) for line in flag_lines), path
        assert config_script(path) in algorithm_modules()


def test_configs_parse_with_absl():
    """Each config is read by absl with its script's flags; values are checked by the settings' rules."""
    by_script = {}
    for path in CONFIGS:
        by_script.setdefault(config_script(path), []).append(path)
    for script, paths in by_script.items():
        code = textwrap.dedent(f'''
            import json, sys
            from absl import flags
            from libml import settings
            import {script} as module
            algorithm = [v for v in vars(module).values() if isinstance(v, type) and issubclass(v, module.train.Algorithm)
                         and v.__module__ == module.__name__][0]
            params = algorithm.all_params()
            settings.define_flags(params)
            out = {{}}
            for path in {paths!r}:
                flags.FLAGS(['prog', '--flagfile=' + path])
                given = {{name: flags.FLAGS[name].value for name in params if flags.FLAGS[name].present}}
                out[path] = dict(settings.resolve(params, given), given=sorted(given))
                flags.FLAGS.unparse_flags()
            print(json.dumps(out))
        ''')
        done = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=ROOT, timeout=300,
                              env=dict(os.environ, PYTHONPATH=ROOT))
        assert done.returncode == 0, done.stderr[-3000:]
        parsed = json.loads(done.stdout.splitlines()[-1])
        for path in paths:
            values = parsed[path]
            flag_lines = [line[2:].split('=')[0] for line in open(path).read().splitlines() if line.startswith('--')]
            assert values['given'] == sorted(flag_lines), path
            for line in open(path).read().splitlines():
                if line.startswith('--') and '=' in line:
                    name, text = line[2:].split('=', 1)
                    assert str(values[name]) == text or values[name] == type(values[name])(text), (path, name)
                elif line.startswith('--'):
                    assert values[line[2:]] is True, (path, line)
    cifar100 = [p for p in CONFIGS if p.endswith('fixmatch_cifar100_400.cfg')][0]
    assert '--filters=128' in open(cifar100).read()
