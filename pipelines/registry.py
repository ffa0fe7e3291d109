"""Finds every model family in this package: a family is one file ``pipelines/<model_type>.py``.

Adding a family touches one file, as adding a method does (``kernels/registry.py``): a module whose name is a
``model_type`` transformers knows holds a :class:`~.base.Pipeline` subclass for it (and may hold subclasses for
sibling types that share everything but the model class, e.g. Qwen3-VL's MoE). Nothing else lists the families:
loading, the ``random:`` models, the tiny test checkpoints and the tests all ask :func:`families`.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache
from typing import TYPE_CHECKING

from .errors import ModelError

if TYPE_CHECKING:
    from .base import Pipeline


def _known_model_types() -> set[str]:
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    return set(CONFIG_MAPPING_NAMES)


@cache
def families() -> dict[str, type[Pipeline]]:
    """Every supported ``model_type`` -> its pipeline class, sorted by name.

    Imports each family module (they import transformers, not the models' weights). Raises nothing: a module
    named after a model type that defines no pipeline for it is a programming error caught by the tests.
    """
    from .base import Pipeline

    known = _known_model_types()
    found: dict[str, type[Pipeline]] = {}
    for info in pkgutil.iter_modules(list(importlib.import_module(__package__).__path__)):
        if info.name not in known:
            continue
        module = importlib.import_module(f"{__package__}.{info.name}")
        for obj in vars(module).values():
            if (isinstance(obj, type) and issubclass(obj, Pipeline) and obj.__module__ == module.__name__
                    and getattr(obj, "model_type", None)):
                found[obj.model_type] = obj
    return dict(sorted(found.items()))


def family(model_type: str | None, what: str) -> type[Pipeline]:
    """The pipeline class of ``model_type``; a one-line :class:`ModelError` naming ``what`` when unsupported."""
    registry = families()
    if model_type not in registry:
        raise ModelError(f"{what} is a {model_type or 'unknown'} model; vidq supports {', '.join(registry)}")
    return registry[model_type]
