import os
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
SHARED_MODELS = pathlib.Path(os.environ.get("LRPTOOL_SHARED_MODELS", ROOT.parent / "shared" / "models"))


def shared_models():
    """The folder of third-party model files, or a visible skip where a clone does not have it."""
    if not SHARED_MODELS.is_dir():
        if os.environ.get("LRPTOOL_REQUIRE_SHARED_MODELS"):
            pytest.fail(f"third-party model files not found at {SHARED_MODELS}")
        pytest.skip(f"third-party model files not found at {SHARED_MODELS} (set LRPTOOL_SHARED_MODELS)")
    return SHARED_MODELS


def pytest_terminal_summary(terminalreporter):
    """The fuzz suite's counts per format and outcome (tests/fuzz_support.py)."""
    import json
    import sys

    fuzz_support = sys.modules.get("fuzz_support")
    if fuzz_support is None or not fuzz_support.TALLY:
        return
    terminalreporter.section("fuzz outcomes")
    for line in fuzz_support.tally_report():
        terminalreporter.write_line(line)
    report = os.environ.get("LRPTOOL_FUZZ_REPORT")
    if report:
        with open(report, "w", encoding="utf-8") as handle:
            json.dump({label: dict(counts) for label, counts in fuzz_support.TALLY.items()}, handle, indent=1)
