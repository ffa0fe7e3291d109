"""What an annotate engine is: the two calls the runner makes, so an engine is a plug-in the runner picks by name.

An engine never writes the output itself: it yields the lines (:func:`.answer.answer_video`'s records) and the
runner writes them through the one fsynced sink, so every engine's output and resumability are the same.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

from .config import AnnotateConfig

# (video, the questions still to ask about it), in the order the runner planned them
Todo = list[tuple[str, list[str]]]


class Engine(Protocol):
    """Runs the per-video work of a plan somewhere (this process, a Ray cluster) and yields each line."""

    def preflight(self, config: AnnotateConfig) -> None:
        """Fail at once, before the output is opened or a model loaded, on a request this engine cannot run."""

    def run(self, todo: Todo, config: AnnotateConfig) -> Iterator[dict[str, Any]]:
        """Answer ``todo`` and yield every line as it is ready (in any order); closing it stops the work."""
