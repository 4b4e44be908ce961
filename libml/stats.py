"""Per-epoch statistics of a run: <run_dir>/stats/epochs.jsonl, one JSON line per evaluation, and
the paper's summaries of them (medians of the last 1, 10, 20 and 50 epochs)."""
import json
import os

import numpy as np

from libml import utils

WINDOWS = (1, 10, 20, 50)


def epochs_path(run_dir):
    return os.path.join(run_dir, 'stats', 'epochs.jsonl')


def read_epochs(run_dir):
    """The list of per-epoch dicts of a run; UserError when the run has none."""
    path = epochs_path(run_dir)
    if not os.path.exists(path):
        raise utils.UserError(f'no statistics in {run_dir} ({path} is missing); give the folder of a run '
                              f'(the one holding args.json, tf/ and stats/)')
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def write_epochs(run_dir, epochs):
    with utils.atomic_write(epochs_path(run_dir)) as tmp:
        with open(tmp, 'w') as f:
            f.writelines(json.dumps(e, sort_keys=True) + '\n' for e in epochs)


def last_medians(values):
    """{'last01': median of the last value, 'last10': of the last 10, 'last20', 'last50'}."""
    return {f'last{n:02d}': float(np.median(values[-n:])) if len(values) else None for n in WINDOWS}


def metric_values(epochs, metric):
    """Per-epoch values of an EMA test metric, e.g. 'accuracy' or 'gm_accuracy'."""
    return [e['ema/test'][metric] for e in epochs]


def summary_main(metric, output):
    """The main() of scripts/extract_*.py: summarize each RUN_DIR argument and print the result."""
    def main(argv):
        if len(argv) < 2:
            raise utils.UserError(f'usage: {os.path.basename(argv[0])} RUN_DIR [RUN_DIR ...]')
        for run_dir in argv[1:]:
            print(run_dir, json.dumps(summarize(run_dir, metric, output), sort_keys=True))
    return main


def summarize(run_dir, metric, output):
    """Writes <run_dir>/stats/<output> with the medians of the last epochs' EMA test `metric`."""
    summary = last_medians(metric_values(read_epochs(run_dir), metric))
    utils.write_json(os.path.join(run_dir, 'stats', output), summary)
    return summary
