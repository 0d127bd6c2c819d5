import faulthandler
import os
import sys
import threading

import pytest
import torch

# Tests never touch the network, and run single-threaded so timings of CI stay predictable.
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)

# A hang must fail CI with a stack trace, not run into CI's time limit silently. Collection builds
# the fused kernel (about a minute cold), so it gets longer than one test.
TEST_DEADLINE_S = float(os.environ.get("L2O_TEST_DEADLINE_S", "600"))
COLLECTION_DEADLINE_S = 2 * TEST_DEADLINE_S
SUITE_DEADLINE_S = 6 * TEST_DEADLINE_S  # the whole run (about 4 minutes on 2 cores)


def _watchdog(config, what: str, seconds: float) -> threading.Timer:
    """A timer that, if not cancelled in time, prints every thread's stack and ends the run."""

    def fire():
        capture = config.pluginmanager.getplugin("capturemanager")
        if capture is not None:
            capture.suspend_global_capture(in_=True)
        sys.stderr.write(f"\n{what} ran past {seconds:.0f} s (L2O_TEST_DEADLINE_S); every thread's stack:\n")
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        sys.stderr.flush()
        os._exit(3)

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()
    return timer


def pytest_sessionstart(session):
    _watchdog(session.config, "the test suite", SUITE_DEADLINE_S)  # ends with the process


@pytest.hookimpl(hookwrapper=True)
def pytest_collection(session):
    timer = _watchdog(session.config, "test collection", COLLECTION_DEADLINE_S)
    yield
    timer.cancel()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    timer = _watchdog(item.config, item.nodeid, TEST_DEADLINE_S)
    yield
    timer.cancel()


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)
