"""The run directory: <train_dir>/<dataset>/<algorithm and its non-default settings>/ holding
args.json (the settings), tf/ (TensorBoard events and checkpoints) and stats/ (one JSON line of
metrics per epoch). A directory made with other settings is refused."""
import os

from libml import settings as settings_lib
from libml import utils


def run_dir(settings, params: dict, algorithm: str, dataset: str) -> str:
    """<train_dir>/<dataset>/<run name>."""
    return os.path.join(settings.train_dir, dataset, settings_lib.run_name(algorithm, params, settings))


def check_settings(path: str, params: dict, settings, algorithm: str, write: bool = True) -> None:
    """Writes <path>/args.json, or refuses to resume a run directory made with other settings."""
    args_path = os.path.join(path, 'args.json')
    if os.path.exists(args_path):
        previous = utils.read_json(args_path, 'run settings')
        diffs = settings_lib.identity_differences(params, previous, settings)
        if diffs:
            text = ', '.join(f'{name}: {old!r} -> {new!r}' for name, old, new in diffs)
            raise utils.UserError(f'run directory {path} was made with different settings ({text}); '
                                  f'resume with the same settings or choose another --train_dir')
    if write:
        utils.write_json(args_path, dict(settings, algorithm=algorithm))
