"""A devstack build that speaks another protocol version, for the tests of
what happens when two sides disagree.

Every devstack ever released speaks protocol 1
(``devstack.core.protocol.PROTOCOL_VERSION``), so no real build speaking
another one can be installed. :func:`speaking_protocol` gives the next best
thing: an environment in which a ``devstack`` process (the real sidecar, the
real agent) starts with that constant set to ``version`` before anything
reads it, through a ``sitecustomize`` module on ``PYTHONPATH``. Everything
else in the process is the real code.
"""

from __future__ import annotations

import os
from pathlib import Path

_SITECUSTOMIZE = """\
# Written by tests/support/protocol.py: this process speaks protocol {version}.
import devstack.core.protocol as _protocol

_protocol.PROTOCOL_VERSION = {version}
"""


def speaking_protocol(directory: Path, version: int) -> dict[str, str]:
    """The environment variables that make a devstack process started with
    them speak protocol ``version`` (``directory`` holds the module)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "sitecustomize.py").write_text(_SITECUSTOMIZE.format(version=int(version)))
    path = os.environ.get("PYTHONPATH", "")
    return {"PYTHONPATH": os.pathsep.join(p for p in (str(directory), path) if p)}
