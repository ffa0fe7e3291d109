"""Annotate whole folders: one JSON line per (video, question), resumable, one bad video never stops the run.

    summary = annotate(find_videos("clips/"), ["what happens?"], "out.jsonl", AnnotateConfig(model=...))

- Resumable: every line is keyed by (absolute video path, question); a rerun reads the output first and skips the
  keys it holds (``retry_failed``: except those whose last line is an error). Each line is appended, flushed and
  fsynced before the next, so a kill loses no finished line; a last line torn by a kill mid-write is cut off on
  the next start (only one that does not parse: a complete line missing its newline gets one).
- Safe: a file that holds no vidq record (a video, text, other JSON) is refused untouched; lines that are not
  vidq records are kept and reported by number; one run writes a file at a time (an flock on ``FILE.lock``), a
  second exits at once naming the first's pid.
- Once per video: each video is decoded, encoded and compressed once for all of its questions (the
  ``VideoQA.prepare`` / ``compress`` / ``answer`` stages); every line's report holds those shared stages' times.
- Isolated: each video is decoded in a worker process with a time limit (``VideoQA.decode``), so a corrupt or
  hanging file becomes one error line. The next videos decode in background threads while the model runs.
- Engines: ``local`` (this process) or ``ray`` (Ray Data, see :mod:`.ray_engine`); both write the same lines.

The package, one concern per module: :mod:`.config` (what a run is asked to do: the config, the videos, the
questions), :mod:`.output` (the resumable JSON-lines file and its lock), :mod:`.answer` (one video's work, which
every engine runs), :mod:`.engine` (what an engine is), :mod:`.runner` (the driver and the local engine),
:mod:`.ray_engine` (the Ray engine, a plug-in the runner imports only for ``--engine ray``).
"""

from .answer import answer_video, error_text, make_record, timed_decode
from .config import ENGINES, VIDEO_EXTENSIONS, AnnotateConfig, find_videos, read_questions
from .engine import Engine, Todo
from .output import (
    RECORD_START, SNIFF_BYTES, Existing, JsonLines, OutputError, OutputLock, describe_line, is_record, line_key,
)
from .runner import EventHandler, LocalEngine, Summary, annotate, engine_for, plan, validate

__all__ = [
    "ENGINES", "RECORD_START", "SNIFF_BYTES", "VIDEO_EXTENSIONS", "AnnotateConfig", "Engine", "EventHandler",
    "Existing", "JsonLines", "LocalEngine", "OutputError", "OutputLock", "Summary", "Todo", "annotate",
    "answer_video", "describe_line", "engine_for", "error_text", "find_videos", "is_record", "line_key",
    "make_record", "plan", "read_questions", "timed_decode", "validate",
]
