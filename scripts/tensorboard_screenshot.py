#!/usr/bin/env python
"""Screenshots of TensorBoard's dashboards for a log folder, taken with a headless Chromium.

  python scripts/tensorboard_screenshot.py --logdir=experiments/fashion_mnist.1@40-1
  python scripts/tensorboard_screenshot.py --logdir=RUN_DIR --dashboards=scalars,hparams --out=shots --width=1920

Starts the installed TensorBoard (`tensorboard --logdir LOGDIR --port PORT --host 127.0.0.1`), waits until it
answers and has found data for the dashboards, saves one PNG per dashboard (default: scalars, images, hparams)
as OUT/tensorboard_<dashboard>.png (OUT defaults to LOGDIR/screenshots), then stops TensorBoard.

Needs a Chromium: Debian's `chromium` package (`sudo apt-get install chromium`, or `scripts/setup.sh
--screenshots`), or --chromium=PATH. It runs headless with a fresh profile, no sandbox (as root in containers),
no GPU and no background network traffic.
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from absl import flags  # noqa: E402

from libml import utils  # noqa: E402

DASHBOARDS = ('scalars', 'images', 'hparams')
BROWSERS = ('chromium', 'chromium-browser', 'google-chrome', 'google-chrome-stable')
CHROMIUM_FLAGS = ('--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
                  '--disable-component-update', '--disable-sync', '--no-first-run', '--no-default-browser-check',
                  '--disable-dev-shm-usage', '--hide-scrollbars', '--mute-audio')
FLAGS = flags.FLAGS


def define_flags():
    """Flags of the command line (defined only when run as a script, so the module imports cleanly)."""
    flags.DEFINE_string('logdir', None, 'TensorBoard log folder: a run directory or a folder of runs.')
    flags.DEFINE_string('out', None, 'Folder of the PNG files (default: LOGDIR/screenshots).')
    flags.DEFINE_list('dashboards', list(DASHBOARDS), 'TensorBoard dashboards to capture, e.g. scalars, images, '
                      'hparams, text, distributions, histograms, graphs.')
    flags.DEFINE_integer('port', 0, 'TensorBoard port (0: a free one).', lower_bound=0)
    flags.DEFINE_integer('width', 1600, 'Browser window width in pixels.', lower_bound=200)
    flags.DEFINE_integer('height', 1000, 'Browser window height in pixels.', lower_bound=200)
    flags.DEFINE_float('wait_s', 90, 'Seconds to wait for TensorBoard to start and load the data.', lower_bound=1)
    flags.DEFINE_integer('render_ms', 10000, 'Milliseconds of (virtual) time the page gets to draw before the '
                         'screenshot.', lower_bound=0)
    flags.DEFINE_string('chromium', None, 'Chromium or Chrome executable (default: the first of ' +
                        ', '.join(BROWSERS) + ' on PATH).')


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def tensorboard_command(logdir: str, port: int) -> list:
    """The command starting the TensorBoard installed beside this Python (its `tensorboard` script, else
    `python -m tensorboard.main`), on 127.0.0.1 only."""
    script = os.path.join(os.path.dirname(sys.executable), 'tensorboard')
    start = [script] if os.access(script, os.X_OK) else [sys.executable, '-m', 'tensorboard.main']
    return start + ['--logdir', logdir, '--port', str(port), '--host', '127.0.0.1']


def find_browser(explicit=None) -> str:
    """Path of the Chromium to use; UserError with the install command when there is none."""
    if explicit:
        path = shutil.which(explicit)
        if not path:
            raise utils.UserError(f'--chromium={explicit} is not an executable; give the path of chromium')
        return path
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    raise utils.UserError('no Chromium found for the screenshots; install it with: sudo apt-get install chromium '
                          '(or bash scripts/setup.sh --screenshots), or give --chromium=PATH')


def browser_command(browser: str, url: str, png: str, profile: str, width: int, height: int, render_ms: int) -> list:
    """Headless Chromium command writing a `width` x `height` screenshot of `url` to `png`, with a fresh profile
    folder `profile`, no sandbox, no GPU and no background network traffic."""
    return [browser, *CHROMIUM_FLAGS, f'--user-data-dir={profile}', f'--window-size={width},{height}',
            f'--virtual-time-budget={render_ms}', f'--screenshot={png}', url]


def dashboard_url(base: str, dashboard: str) -> str:
    """URL of one TensorBoard dashboard, e.g. http://127.0.0.1:6006/#scalars."""
    return f'{base.rstrip("/")}/#{dashboard}'


def get_json(url: str, timeout: float = 5):
    """Parsed JSON answer of `url`, or None when it does not answer (yet)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return json.loads(response.read().decode())
    except (OSError, ValueError, urllib.error.URLError):
        return None


def wait_for_tensorboard(base: str, process, dashboards, wait_s: float, poll_s: float = 0.5) -> list:
    """Waits until TensorBoard at `base` answers and reports data for every dashboard, at most `wait_s`
    seconds; returns the dashboards still without data then. UserError if TensorBoard exits or never answers."""
    deadline = time.monotonic() + wait_s
    answered = False
    while True:
        if process is not None and process.poll() is not None:
            raise utils.UserError(f'TensorBoard stopped (exit status {process.returncode}) before answering; run '
                                  f'its command by hand to see why: {" ".join(process.args)}')
        plugins = get_json(f'{base.rstrip("/")}/data/plugins_listing')
        if plugins is not None:
            answered = True
            missing = [d for d in dashboards if not (plugins.get(d) or {}).get('enabled')]
            if not missing:
                return []
        if time.monotonic() > deadline:
            if not answered:
                raise utils.UserError(f'TensorBoard did not answer at {base} within {wait_s:g} s; raise --wait_s')
            return missing
        time.sleep(poll_s)


def screenshot(browser: str, url: str, png: str, width: int, height: int, render_ms: int, timeout_s: float = 180):
    """Writes a PNG screenshot of `url` (atomically); UserError when Chromium fails."""
    with tempfile.TemporaryDirectory(prefix='chromium_profile_') as profile, utils.atomic_write(png) as tmp:
        shot = tmp + '.png'  # Chromium wants the extension
        command = browser_command(browser, url, shot, profile, width, height, render_ms)
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s,
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise utils.UserError(f'Chromium took more than {timeout_s:g} s for {url}; try a smaller --render_ms') \
                from None
        if done.returncode != 0 or not os.path.exists(shot) or not os.path.getsize(shot):
            if os.path.exists(shot):
                os.remove(shot)
            detail = (done.stderr.strip().splitlines() or ['no output'])[-1]
            raise utils.UserError(f'Chromium made no screenshot of {url} (exit status {done.returncode}: {detail}); '
                                  f'run by hand: {" ".join(command)}')
        os.chmod(shot, utils.file_mode())
        os.replace(shot, tmp)


def capture(logdir: str, out: str, dashboards=DASHBOARDS, port: int = 0, width: int = 1600, height: int = 1000,
            wait_s: float = 90, render_ms: int = 10000, browser=None) -> list:
    """Starts TensorBoard on `logdir`, writes out/tensorboard_<dashboard>.png for each dashboard, stops it;
    returns the PNG paths."""
    if not os.path.isdir(logdir):
        raise utils.UserError(f'--logdir {logdir} is not a folder; give a run directory or a folder of runs')
    browser = find_browser(browser)
    port = port or free_port()
    base = f'http://127.0.0.1:{port}'
    with open(os.devnull, 'w') as devnull:
        process = subprocess.Popen(tensorboard_command(logdir, port), stdout=devnull, stderr=devnull,
                                   stdin=subprocess.DEVNULL)
    try:
        missing = wait_for_tensorboard(base, process, dashboards, wait_s)
        for dashboard in missing:
            print(f'warning: TensorBoard shows no {dashboard} data for {logdir}; its screenshot shows an empty '
                  f'dashboard', file=sys.stderr)
        paths = []
        for dashboard in dashboards:
            png = os.path.join(out, f'tensorboard_{dashboard}.png')
            screenshot(browser, dashboard_url(base, dashboard), png, width, height, render_ms)
            paths.append(png)
        return paths
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def main(argv):
    if len(argv) > 1 or not FLAGS.logdir:
        raise utils.UserError('usage: tensorboard_screenshot.py --logdir=LOGDIR [--out=DIR] [--dashboards=...]')
    out = FLAGS.out or os.path.join(FLAGS.logdir, 'screenshots')
    for path in capture(FLAGS.logdir, out, FLAGS.dashboards, FLAGS.port, FLAGS.width, FLAGS.height, FLAGS.wait_s,
                        FLAGS.render_ms, FLAGS.chromium):
        print(f'wrote {path}')


if __name__ == '__main__':
    define_flags()
    utils.run(main)
