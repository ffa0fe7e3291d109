"""Checks of the user's inputs that need no model, run before anything loads; and reading the user's text files.

Every command calls these first, so a typo costs a second, not a model load (15 s and 4.5 GB for a 0.5B model)
or a whole run whose results are then lost because the output path was wrong. Nothing here imports torch;
:func:`check_ask` imports the method registry (which does) only to validate ``--method`` and ``--opt``.
Every failure is one line naming the option or file and what to do: an :class:`~flashvid_cli.errors.InputError`
for a file or path, a ``ConfigError`` for an option's value, a ``MethodError`` for ``--method``/``--opt``.
"""

from __future__ import annotations

import errno
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import InputError

if TYPE_CHECKING:
    from .config import AskConfig

DEVICES = "auto, cpu, cuda, cuda:N"
DTYPE_NAMES = ("auto", "float32", "bfloat16", "float16")  # pipelines.base.DTYPES plus auto (a test keeps them equal)
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")
# OSErrors that are the user's machine or path, not a bug: said as one line naming the file.
USER_ERRNOS = frozenset({
    errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT, errno.EISDIR, errno.ENOTDIR,
    errno.ENAMETOOLONG, errno.ENOENT, errno.EFBIG,
})
_HINTS = {
    errno.ENOSPC: "free some space or write elsewhere",
    errno.EDQUOT: "free some space or write elsewhere",
    errno.EROFS: "the file system is read-only: write elsewhere",
    errno.EACCES: "check its permissions or write elsewhere",
    errno.EPERM: "check its permissions or write elsewhere",
}


def os_error_line(exc: OSError, path: str | os.PathLike | None = None, what: str = "") -> str:
    """One line for an OSError of the user's machine: the file, the system's reason, what to do."""
    name = path if path is not None else (exc.filename or "a file")
    reason = exc.strerror or str(exc)
    hint = _HINTS.get(exc.errno or 0)
    return f"{what + ' ' if what else ''}{os.fspath(name)}: {reason}" + (f"; {hint}" if hint else "")


# -- text the user gives ------------------------------------------------------------------------------------------
def read_text_lines(path: str | os.PathLike, what: str) -> list[str]:
    """The lines of a UTF-8 text file: a leading byte-order mark dropped, CRLF and CR line ends read as LF.

    ``what`` names the input in errors (e.g. ``"--questions"``; empty: the path alone). Only CR and LF end a
    line: a JSON string may hold U+2028, which ``str.splitlines`` would cut. Raises InputError for a missing,
    unreadable, non-UTF-8 (UTF-16 included) or directory path.
    """
    path = Path(path).expanduser()
    named = f"{what} {path}" if what else str(path)
    if path.is_dir():
        raise InputError(f"{named} is a directory; give a text file")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"cannot read {named}: no such file") from None
    except OSError as exc:
        raise InputError(f"cannot read {os_error_line(exc, path, what)}") from None
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise InputError(f"{named} is UTF-16 text; save it as UTF-8")
    try:
        text = data.decode("utf-8-sig")  # utf-8-sig drops one leading BOM (Notepad, Excel exports)
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise InputError(f"{named} is not UTF-8 text (line {line}); save it as UTF-8") from None
    lines = re.split(r"\r\n|\r|\n", text)
    if lines and lines[-1] == "":
        lines.pop()  # the final line end ends the last line; it does not start an empty one
    return lines


def check_question(question: str, what: str = "the question") -> str:
    """``question`` stripped; an empty or blank question is a one-line error."""
    if not question.strip():
        raise InputError(f"{what} is empty; ask something about the video")
    return question.strip()


# -- files and paths ----------------------------------------------------------------------------------------------
def check_video_file(path: str | os.PathLike, *, empty_ok: bool = False, probe: bool = False) -> None:
    """``path`` exists, is a readable, non-empty regular file.

    ``empty_ok``: a 0-byte file passes (bench reports a broken video as its row; a missing one is a typo).
    ``probe``: also open it with FFmpeg (PyAV; no frame decoded, no torch) and raise the decoder's own one-line
    VideoError for a file that is no video at all (random bytes, text, an image, audio only), so that a command
    about one video says so in a moment instead of after loading the model. Whether its frames decode is still
    only known by decoding them.
    """
    path = os.fspath(Path(path).expanduser())
    if not os.path.exists(path):
        raise InputError(f"{path}: no such file")
    if os.path.isdir(path):
        raise InputError(f"{path}: is a directory, not a video file")
    if not os.path.isfile(path):
        raise InputError(f"{path}: is not a regular file (a device, pipe or socket): give a video file")
    if os.path.getsize(path) == 0 and not empty_ok:
        raise InputError(f"{path}: empty file (0 bytes)")
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise InputError(f"cannot read {os_error_line(exc, path)}") from None
    if probe:
        from .pipelines.video import open_video

        container, _ = open_video(path)
        container.close()


def check_plot_file(path: str | os.PathLike, option: str = "--plot") -> None:
    """Fail now, not after the run, for a plot matplotlib cannot write to ``path``: matplotlib missing (the ``plot``
    extra), a file name whose extension is not one of its formats (none: it would save ``path.png`` instead), or
    a path :func:`check_output_file` refuses. Raises InputError naming ``option``."""
    try:
        from matplotlib.backend_bases import FigureCanvasBase
    except ImportError:
        raise InputError(f"{option} needs matplotlib: pip install 'vidq[plot]'") from None
    kinds = FigureCanvasBase.get_supported_filetypes()  # {"png": "Portable Network Graphics", ...}
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix not in kinds:
        shown = "no extension" if not suffix else f"'.{suffix}'"
        raise InputError(f"{option} {path}: matplotlib cannot write {shown}; end the name in .png, .pdf or .svg "
                         f"(or one of {', '.join('.' + k for k in sorted(kinds) if k not in ('png', 'pdf', 'svg'))})")
    check_output_file(path, option)


def check_output_file(path: str | os.PathLike, option: str) -> None:
    """Fail now, not after the run: ``path`` must be a file this process can create or append to.

    The folder must exist (vidq never creates one: a typo in it would hide the output); a path that is a
    directory, a folder that is a file, a read-only file system or a lack of permission is one InputError
    naming ``option`` and the path. Writability is tried, not guessed from mode bits (root ignores them): an
    existing file is opened for appending (not changed), a new one is probed with a temporary file that is
    removed at once.
    """
    target = Path(path).expanduser()
    if target.is_dir():
        raise InputError(f"{option} {path} is a directory; give a file path")
    folder = target.parent
    if not folder.exists():
        raise InputError(f"{option} {path}: the folder {folder} does not exist; create it or write elsewhere")
    if not folder.is_dir():
        raise InputError(f"{option} {path}: {folder} is a file, not a folder")
    try:
        if target.exists():
            with open(target, "a"):
                pass
        else:
            with tempfile.NamedTemporaryFile(dir=folder, prefix=".vidq-write-check-"):
                pass
    except OSError as exc:
        raise InputError(f"cannot write {os_error_line(exc, target, option)}") from None


@contextmanager
def writing(path: str | os.PathLike, option: str) -> Iterator[None]:
    """Turn an OSError while writing ``path`` (a full disk, a read-only file system) into one InputError line."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in USER_ERRNOS:
            raise
        raise InputError(f"cannot write {os_error_line(exc, path, option)}") from None


# -- options ------------------------------------------------------------------------------------------------------
def _option_error(message: str) -> Exception:
    """A bad option value is a ConfigError, as AskConfig's own checks raise (files and paths are InputErrors)."""
    from .config import ConfigError

    return ConfigError(message)


def check_device(device: str) -> None:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N``; whether a CUDA device is there is known once torch loads."""
    if not _DEVICE.fullmatch(device):
        raise _option_error(f"--device {device!r} is not a device vidq runs on; choose one of: {DEVICES}")


def check_dtype(dtype: str) -> None:
    if dtype not in DTYPE_NAMES:
        raise _option_error(f"--dtype {dtype!r} is unknown; choose one of: {', '.join(DTYPE_NAMES)}")


def check_decoder(decoder: str) -> None:
    from .pipelines.video import DECODERS

    if decoder not in DECODERS:
        raise _option_error(f"--decoder {decoder!r} is unknown; choose one of: {', '.join(DECODERS)}")


def check_seek(seek: str, decoder: str) -> None:
    """``--seek`` is exact or keyframe; keyframe decodes with PyAV, so not with ``--decoder decord``."""
    from .pipelines.video import SEEKS

    if seek not in SEEKS:
        raise _option_error(f"--seek {seek!r} is unknown; choose one of: {', '.join(SEEKS)}")
    if seek == "keyframe" and decoder == "decord":
        raise _option_error("--seek keyframe decodes keyframes with PyAV: use --decoder auto or pyav, not decord")


def check_text_after_video(rule: str | None) -> None:
    """The value itself first: a wrong value is wrong whatever the model (only Qwen2.5-VL uses it)."""
    rules = ("hf", "qwen")  # every family's text_after_video_rules together (a test keeps them equal)
    if rule is not None and rule not in rules:
        raise _option_error(f"--text-after-video must be one of {', '.join(rules)}, got {rule!r}")


def check_model_options(device: str, dtype: str) -> None:
    check_device(device)
    check_dtype(dtype)


def check_ask(config: AskConfig, device: str = "auto", dtype: str = "auto", model: str | None = None) -> None:
    """Everything about one ask that needs no loaded model: device, dtype, decoder, seek, the method and its ``--opt``
    values, and with ``model`` an in-LLM pruning layer its decoder cannot hold (read from its config.json)."""
    from .kernels import build

    check_model_options(device, dtype)
    check_decoder(config.decoder)
    check_seek(config.seek, config.decoder)
    check_text_after_video(config.text_after_video)
    method = build(config.method, config.keep, options=config.options)  # MethodError on a bad name or option value
    stage = method.llm_prune()
    if stage is not None and model is not None:
        from .pipelines import llm_depth

        depth = llm_depth(model)
        if depth is not None:
            stage.layer_for(depth)  # MethodError: "--opt pruning_layer=2 needs a model with more than 2 ..."
