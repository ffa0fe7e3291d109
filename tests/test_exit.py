"""The console entry point ends the process without the interpreter's finalization (issue 28: ~1 s after the
answer), but only after everything a normal exit does that matters: output flushed, non-daemon threads joined,
``atexit`` handlers run, the command's exit code kept."""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import atexit, sys, threading, time
    from flashvid_cli.cli import main

    atexit.register(lambda: print("atexit ran", file=sys.stderr, flush=True))

    class Last:  # freed only by the interpreter's finalization, which the fast exit skips
        def __del__(self):
            print("finalized", file=sys.stderr, flush=True)

    keep = Last()

    def late():
        time.sleep(0.3)
        print("thread done", file=sys.stderr, flush=True)

    threading.Thread(target=late).start()  # non-daemon: a normal exit waits for it
    sys.stdout.write("x" * 200_000)  # more than a pipe's buffer, unflushed when the command returns
    sys.argv = ["vidq", *sys.argv[1:]]
    main()
    print("main returned", file=sys.stderr)  # never: main ends the process
""")


def _run(*args: str, **env: str) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([sys.executable, "-c", SCRIPT, *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **env})


def test_the_fast_exit_flushes_joins_and_runs_atexit():
    done = _run("methods")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("x" * 200_000) and "sparsevila" in done.stdout  # nothing lost in the pipe
    assert "thread done" in done.stderr and "atexit ran" in done.stderr
    assert done.stderr.index("thread done") < done.stderr.index("atexit ran")  # as the interpreter orders them
    assert "main returned" not in done.stderr and "finalized" not in done.stderr  # no finalization: the ~1 s


def test_the_fast_exit_keeps_the_exit_code():
    bad = _run("ask", "/nonexistent/video.mp4", "what?")
    assert bad.returncode == 1 and "atexit ran" in bad.stderr
    assert "/nonexistent/video.mp4" in bad.stderr and "Traceback" not in bad.stderr
    usage = _run("ask")  # click's usage error
    assert usage.returncode == 2 and "atexit ran" in usage.stderr


def test_vidq_debug_keeps_the_normal_exit():
    debug = _run("methods", VIDQ_DEBUG="1")
    assert debug.returncode == 0 and "atexit ran" in debug.stderr
    assert "finalized" in debug.stderr  # the interpreter's own exit, finalization included
