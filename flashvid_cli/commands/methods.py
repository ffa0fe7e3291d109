"""``vidq methods``: the registered compression methods, their options and the defaults a run uses."""

from __future__ import annotations

from .shell import Command, app, output_console, user_errors


@app.command(cls=Command)
def methods() -> None:
    """List the compression methods, their options and the defaults a run uses (per model family where they differ)."""
    with user_errors():
        from rich.table import Table

        from ..kernels import methods as registered
        from ..kernels.registry import option_defaults
        from ..pipelines.registry import families

        table = Table(show_edge=False, expand=True)
        # every cell wraps, none is cut: the options and their defaults are what this command is for, so they get
        # the largest share of the width
        table.add_column("method", no_wrap=True)
        table.add_column("needs", overflow="fold", ratio=2)
        table.add_column("options (default a run uses)", overflow="fold", ratio=5)
        table.add_column("--tokens reaches", overflow="fold", ratio=3)
        for name, cls in registered().items():
            defaults = option_defaults(name, families())  # resolved as a run resolves them, for every family
            options = "\n".join(f"{key}={_shown(value)}" for key, value in defaults.items()) or "-"  # one per line
            needs = sorted(cls.needs - {"question"})
            if "question" in cls.needs:
                needs.append("the question")
            elif cls.prunes_in_llm:  # the in-LLM stage reads the question through the last token's attention
                on = cls().llm_prune() is not None
                needs.append("the question (in-LLM stage)" if on else "the question, with its in-LLM stage on")
            elif cls().decode_sparsity() is not None:  # which cached keys each answer decodes over: the question's
                needs.append("the question (decoding)")
            table.add_row(name, "\n".join(needs) or "-", options, cls.granularity)
        output_console().print(table)
        # below the table, not a column: at 80 columns a fifth column would cut the others' words
        streams: dict[str, list[str]] = {}
        for name, cls in registered().items():
            how = "no (selects over the whole clip)" if cls.stream_unit is None else \
                f"per {cls.stream_unit}, {cls.stream_note}"
            streams.setdefault(how, []).append(name)
        lines = [f"  {how}: {', '.join(names)}" for how, names in sorted(streams.items(), key=lambda p: p[0][:2] == "no")]
        output_console().print("\n".join(["--stream (docs/STREAMING.md):", *lines]), highlight=False)


def _shown(value: object) -> str:
    """A default as the table shows it: a number to 4 significant digits (nuwa's llm_keep 1/7 read
    0.14285714285714285), anything else as it is."""
    try:
        number = float(value) if isinstance(value, (str, float)) else None
    except ValueError:
        number = None
    if number is None or isinstance(value, bool) or len(str(value)) <= 8:
        return str(value)
    return f"{number:.4g}"
