"""Settings for the test suite: the project's, plus the test-only apps under ``tests/``."""

import atexit
import os
import shutil
import tempfile

# The test process gets a metrics directory of its own, removed at exit (a server subprocess
# started by tests/servers.py gets another, so their counts never mix).
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    _metrics_dir = tempfile.mkdtemp(prefix="mcp-test-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = _metrics_dir
    atexit.register(shutil.rmtree, _metrics_dir, True)

from config.settings import *  # noqa: F403
from config.settings import INSTALLED_APPS

TEST_APPS = ["tests.zoo", "tests.notes", "tests.hurried", "tests.shelf", "tests.outbound"]
# A project app with a test app's label (the README's example app is `notes`, as `tests/notes`
# is: someone following it has both) is left out here; the test app stands in for it.
_test_labels = {app.rsplit(".", 1)[-1] for app in TEST_APPS}
INSTALLED_APPS = [app for app in INSTALLED_APPS if app not in _test_labels] + TEST_APPS
