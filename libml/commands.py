"""Console commands of the installed package (pyproject.toml [project.scripts]).

Each command runs one module as `python -m MODULE` would (its `if __name__ == '__main__':` block, with
sys.argv[0] set to the module's file): the algorithm modules (`fixmatch --dataset=...`) and the tools of
scripts/, installed as the package `fixmatch_scripts` (`fixmatch-create-datasets --datasets=...`).
Nothing here imports TensorFlow: the modules themselves set up a quiet start.
"""
import glob
import os
import re
import runpy
import sys

# Algorithm modules at the top of the checkout; a new one also needs its lines in pyproject.toml.
ALGORITHMS = ('fixmatch', 'mixmatch', 'remixmatch', 'uda', 'pi_model', 'mean_teacher', 'vat', 'ict', 'pseudo_label',
              'fully_supervised', 'flexmatch', 'mixup', 'freematch', 'softmatch', 'adamatch', 'simmatch', 'dash')
# scripts/<name>.py, as the console command fixmatch-<name with dashes>.
TOOLS = ('create_datasets', 'create_split', 'create_unlabeled', 'inspect_dataset', 'evaluate', 'export',
         'extract_accuracy', 'extract_gm_accuracy', 'aggregate_accuracy', 'run_paper_tables', 'tensorboard_screenshot')
TOOLS_PACKAGE = 'fixmatch_scripts'


def entry_scripts(root: str) -> tuple:
    """((module, class), ...) of every algorithm script at the top of the checkout `root` (a line
    `train.main(Class)`), sorted by module name: what a new method joins without a list to edit."""
    found = []
    for path in sorted(glob.glob(os.path.join(root, '*.py'))):
        with open(path) as f:
            match = re.search(r'^\s+train\.main\((\w+)\)', f.read(), re.M)
        if match:
            found.append((os.path.basename(path)[:-3], match.group(1)))
    return tuple(found)


def run_module(module: str) -> None:
    """Runs `module` as the main program."""
    runpy.run_module(module, run_name='__main__', alter_sys=True)


def run_tool(name: str) -> None:
    """Runs scripts/<name>.py from the installed tools package (its folder on sys.path, as for a script)."""
    import importlib.util
    spec = importlib.util.find_spec(TOOLS_PACKAGE)
    if spec is not None and spec.submodule_search_locations:
        sys.path.insert(0, list(spec.submodule_search_locations)[0])
    run_module(f'{TOOLS_PACKAGE}.{name}')


def _command(run, name):
    def command():
        run(name)
    command.__name__ = command.__qualname__ = name
    command.__doc__ = f'Console command: runs {name}.'
    return command


for _name in ALGORITHMS:
    globals()[_name] = _command(run_module, _name)
for _name in TOOLS:
    globals()[_name] = _command(run_tool, _name)
del _name
