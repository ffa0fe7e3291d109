"""The ``vidq`` entry point: importing each command module registers its command on ``app``, then ``main`` runs it.

The import order is the order ``vidq --help`` lists the commands in.
"""

from __future__ import annotations

import sys

from .commands import ask as _ask, methods as _methods  # noqa: F401
from .commands import annotate as _annotate, bench as _bench, evaluate as _evaluate  # noqa: F401
from .commands import cache as _cache  # noqa: F401
from .commands import chat as _chat  # noqa: F401
from .commands import serve as _serve  # noqa: F401
from .commands.shell import app


def main() -> None:
    """Console-script entry point."""
    app(prog_name="vidq")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
