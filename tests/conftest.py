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
