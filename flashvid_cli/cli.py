"""The ``vidq`` entry point: importing each command module registers its command on ``app``, then ``main`` runs it.

The import order is the order ``vidq --help`` lists the commands in.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
from typing import NoReturn

from .commands import ask as _ask, methods as _methods  # noqa: F401
from .commands import annotate as _annotate, bench as _bench, evaluate as _evaluate  # noqa: F401
from .commands import cache as _cache  # noqa: F401
from .commands import chat as _chat  # noqa: F401
from .commands import serve as _serve  # noqa: F401
from .commands.shell import DEBUG_VARIABLE, app


def main() -> None:
    """Console-script entry point: run the command, then end the process without the interpreter's finalization.

    Finalization only frees memory the process is about to give back (the model's tensors, ~400k objects: ~1 s
    after a demo ``vidq ask``'s answer, docs/BENCHMARKS.md), so once the command has returned, stdout and stderr
    are flushed and every ``atexit`` handler has run (multiprocessing joins its children, Ray shuts down, temporary
    directories are removed) after the non-daemon threads are joined, the process exits with ``os._exit``. Every file vidq writes is closed (and the cache's
    and annotate's fsynced) before its command returns. ``VIDQ_DEBUG=1`` keeps the normal exit. Not used by
    ``CliRunner`` (tests call ``app``).
    """
    try:
        app(prog_name="vidq")
        code = 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        if not isinstance(stop.code, (int, type(None))):
            print(stop.code, file=sys.stderr)  # what sys.exit("message") would have printed
    if os.environ.get(DEBUG_VARIABLE, "") not in {"", "0"}:
        sys.exit(code)
    end_process(code)


def end_process(code: int) -> NoReturn:
    """What the interpreter's shutdown does that matters, then ``os._exit(code)``: join the non-daemon threads, run
    every ``atexit`` handler, flush stdout and stderr (141 for a broken pipe when ``code`` is 0). Skips freeing
    every object, which costs time and, in native libraries' teardown, once a SIGSEGV (the test run's conftest
    ends with it too)."""
    for thread in threading.enumerate():  # what the interpreter's shutdown does first: wait for non-daemon threads
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed or broken pipe: nothing left to say to anyone
            code = code or 141
    os._exit(code)


if __name__ == "__main__":  # pragma: no cover
    main()
