"""What the Python test scripts share: where the workspace's binaries and artifacts are."""

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


class Failure(Exception):
    """A check that did not hold."""


def binary(name):
    """$KOSD / $KOSCTL, else $CARGO_TARGET_DIR/debug/NAME, else <repo>/target/debug/NAME."""
    if os.environ.get(name.upper()):
        return Path(os.environ[name.upper()])
    target = Path(os.environ.get("CARGO_TARGET_DIR") or REPO / "target")
    return target / "debug" / name


def artifacts_dir(name):
    """$KOS_ARTIFACTS, else <repo>/target/NAME."""
    return Path(os.environ.get("KOS_ARTIFACTS") or REPO / "target" / name)
