"""scripts/tensorboard_screenshot.py: commands, waiting for TensorBoard, and (where Chromium is installed) a real
screenshot of a small log folder."""
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest

from conftest import ROOT
from libml import utils

sys.path.insert(0, os.path.join(ROOT, 'scripts'))
import tensorboard_screenshot as shot  # noqa: E402


def test_browser_command_is_headless_and_isolated():
    command = shot.browser_command('/usr/bin/chromium', 'http://127.0.0.1:1/#scalars', '/o/x.png', '/tmp/p', 800, 600,
                                   5000)
    assert command[0] == '/usr/bin/chromium' and command[-1] == 'http://127.0.0.1:1/#scalars'
    for flag in ('--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
                 '--disable-component-update', '--disable-sync', '--no-first-run', '--user-data-dir=/tmp/p',
                 '--window-size=800,600', '--screenshot=/o/x.png', '--virtual-time-budget=5000'):
        assert flag in command
    assert shot.dashboard_url('http://127.0.0.1:6006/', 'hparams') == 'http://127.0.0.1:6006/#hparams'
    command = shot.tensorboard_command('/logs', 6123)
    assert command[-6:] == ['--logdir', '/logs', '--port', '6123', '--host', '127.0.0.1']
    with pytest.raises(utils.UserError, match='--chromium=/no/such/browser is not an executable'):
        shot.find_browser('/no/such/browser')


class FakeTensorBoard(http.server.BaseHTTPRequestHandler):
    plugins = {}

    def do_GET(self):  # noqa: N802
        if self.path != '/data/plugins_listing':
            self.send_error(404)
            return
        body = json.dumps(self.plugins).encode()
        self.send_response(200)
        self.send_header('Content-Type', 'application/json')
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_server():
    server = http.server.HTTPServer(('127.0.0.1', 0), FakeTensorBoard)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f'http://127.0.0.1:{server.server_address[1]}'
    server.shutdown()
    server.server_close()


def test_waits_for_the_dashboards_data(fake_server):
    FakeTensorBoard.plugins = {'scalars': {'enabled': True}, 'images': {'enabled': False}}
    assert shot.wait_for_tensorboard(fake_server, None, ['scalars'], wait_s=5) == []
    assert shot.wait_for_tensorboard(fake_server, None, ['scalars', 'images', 'hparams'], wait_s=0.3,
                                     poll_s=0.1) == ['images', 'hparams']
    with pytest.raises(utils.UserError, match='did not answer'):
        shot.wait_for_tensorboard(f'http://127.0.0.1:{shot.free_port()}', None, ['scalars'], wait_s=0.3, poll_s=0.1)
    stopped = subprocess.Popen([sys.executable, '-c', 'pass'])
    stopped.wait()
    with pytest.raises(utils.UserError, match='TensorBoard stopped'):
        shot.wait_for_tensorboard(fake_server, stopped, ['scalars'], wait_s=5)


@pytest.mark.skipif(not any(shutil.which(b) for b in shot.BROWSERS),
                    reason='no Chromium (apt-get install chromium, or scripts/setup.sh --screenshots)')
def test_screenshot_of_a_real_tensorboard(tmp_path):
    import tensorflow as tf
    logdir = tmp_path / 'logs'
    with tf.summary.create_file_writer(str(logdir / 'run')).as_default():
        for step in range(5):
            tf.summary.scalar('accuracy', 10.0 * step, step=step)
    paths = shot.capture(str(logdir), str(tmp_path / 'out'), ['scalars'], width=800, height=600, wait_s=60,
                         render_ms=3000)
    assert paths == [str(tmp_path / 'out' / 'tensorboard_scalars.png')]
    image = tf.io.decode_png(tf.io.read_file(paths[0])).numpy()
    assert image.shape[:2] == (600, 800)
    assert len(np.unique(image.reshape(-1, image.shape[-1]), axis=0)) > 20  # a drawn page, not a blank one
    assert os.listdir(tmp_path / 'out') == ['tensorboard_scalars.png']
