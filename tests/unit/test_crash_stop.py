"""A worker whose stop after a crash hangs in Faust still exits (code 1), so its supervisor
restarts it; nothing is written after a crash, so nothing is lost by exiting."""

from __future__ import annotations

import subprocess
import sys


def test_a_stop_after_a_crash_that_hangs_ends_the_process_with_code_1() -> None:
    hung_stop = (
        "import logging, threading, time\n"
        "logging.basicConfig(level='INFO')\n"
        "import streamer.app as app\n"
        "timer = threading.Timer(0.2, app._exit_after_crash_stop_hung)\n"
        "timer.daemon = True\n"
        "timer.start()\n"
        "time.sleep(30)  # Faust's stop, hanging\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", hung_stop], capture_output=True, text=True, timeout=25
    )
    assert done.returncode == 1
    assert "the stop after a crash did not finish in 20 s: exiting with code 1 now" in done.stderr
