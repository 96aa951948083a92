"""Process tuning (mailservice.runtime): each switch does what it says, and off does nothing.

Pinning and the collector's settings belong to the whole process, so the tests that turn them
on run in a child process and leave pytest's own untouched.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys

import pytest

from mailservice import runtime
from mailservice.testing.service_process import ROOT


def in_child(code: str) -> dict:
    """Run `code` in a fresh interpreter at the repo root; it prints one JSON object."""
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="Linux only")
def test_pin_to_core_pins_to_the_index_modulo_the_cores():
    cores = sorted(os.sched_getaffinity(0))
    found = in_child(
        "import json, os\n"
        "from mailservice.runtime import pin_to_core\n"
        f"core = pin_to_core({len(cores) + 1}, True)\n"
        "print(json.dumps({'core': core, 'now': sorted(os.sched_getaffinity(0))}))\n"
    )
    expected = cores[(len(cores) + 1) % len(cores)]
    assert found == {"core": expected, "now": [expected]}


def test_pin_to_core_off_leaves_the_process_free():
    before = os.sched_getaffinity(0) if hasattr(os, "sched_setaffinity") else None
    assert runtime.pin_to_core(0, False) is None
    if before is not None:
        assert os.sched_getaffinity(0) == before


def test_tune_gc_freezes_and_moves_full_collections_to_a_thread():
    found = in_child(
        "import gc, json, threading\n"
        "from mailservice.runtime import tune_gc\n"
        "tune_gc(True)\n"
        "print(json.dumps({'threshold2': gc.get_threshold()[2], 'frozen': gc.get_freeze_count(),"
        " 'threads': [t.name for t in threading.enumerate()]}))\n"
    )
    assert found["threshold2"] == 1_000_000
    assert found["frozen"] > 0
    assert "full-gc" in found["threads"]


def test_tune_gc_off_keeps_pythons_defaults():
    before = (gc.get_threshold(), gc.get_freeze_count())
    runtime.tune_gc(False)
    assert (gc.get_threshold(), gc.get_freeze_count()) == before


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's mallopt")
def test_tune_malloc_applies_on_glibc():
    assert in_child(
        "import json\nfrom mailservice.runtime import tune_malloc\nprint(json.dumps(tune_malloc()))"
    )
