"""The family registry: one file per model_type, each complete, and no production file but its own names it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from flashvid_cli.pipelines.base import Pipeline
from flashvid_cli.pipelines.registry import families

REPO = Path(__file__).resolve().parents[1]
# The package's production sources. kernels/ may name a family in a method's per-model recipe (the method's own
# file); JSON configs may name theirs. Symlinks (flashvid_cli/pipelines, flashvid_cli/kernels) are not followed.
PRODUCTION = [p for folder in ("flashvid_cli", "pipelines") for p in sorted((REPO / folder).rglob("*.py"))
              if not any(part.is_symlink() for part in [p, *p.parents])]
HOOKS = ("stand_in_preprocessor", "point_special_tokens", "build_tiny", "preprocess", "encode", "inputs",
         "stock_inputs")


def test_every_family_lives_in_a_file_named_by_its_model_type():
    found = families()
    assert {"llava_onevision", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe"} <= set(found)
    for model_type, cls in found.items():
        module = cls.__module__.rsplit(".", 1)[-1]
        # A sibling type (Qwen3-VL's MoE) may share its base family's file; the file is named by one of them.
        assert module == model_type or issubclass(cls, found[module]), (model_type, module)
        for hook in HOOKS:
            assert getattr(cls, hook) is not getattr(Pipeline, hook), f"{model_type} lacks {hook}"
        assert cls.special_tokens and cls.video_token in cls.special_tokens and cls.stand_in_chat_template


def _model_types_by_file() -> dict[Path, set[str]]:
    by_file: dict[Path, set[str]] = {}
    for model_type, cls in families().items():
        module = cls.__module__.rsplit(".", 1)[-1]
        by_file.setdefault(REPO / "pipelines" / f"{module}.py", set()).add(model_type)
    return by_file


def test_no_production_file_but_its_own_names_a_family():
    by_file = _model_types_by_file()
    assert PRODUCTION and all(path in PRODUCTION for path in by_file)
    offences = []
    for path in PRODUCTION:
        text = path.read_text()
        for owner, model_types in by_file.items():
            if path == owner:
                continue
            for model_type in model_types:
                for match in re.finditer(rf"\b{re.escape(model_type)}\b", text):
                    line = text.count("\n", 0, match.start()) + 1
                    offences.append(f"{path.relative_to(REPO)}:{line} names {model_type}")
    assert not offences, "\n".join(offences)


def test_the_check_would_see_a_family_named_elsewhere(tmp_path):
    """The scan above is not vacuous: a line like the old api.py rule is found by the same pattern."""
    line = 'if pipe.model_type != "qwen2_5_vl":'
    assert re.search(rf"\b{re.escape('qwen2_5_vl')}\b", line)


@pytest.mark.parametrize("model_type", tuple(families()))
def test_family_capabilities_are_consistent(model_type):
    cls = families()[model_type]
    rules = cls.text_after_video_rules
    assert (cls.text_after_video in rules) if rules else cls.text_after_video is None
