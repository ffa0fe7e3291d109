"""Render an :class:`~flashvid_cli.results.AskResult` report as rich tables (the CLI's only presentation code)."""

from __future__ import annotations

import dataclasses

from rich.console import Console, Group
from rich.table import Table

from .results import Report


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:,.1f} ms"


def _bytes(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB"


def _timestamps(values: list[float], limit: int = 12) -> str:
    shown = ", ".join(f"{t:.2f}" for t in values[:limit])
    return shown + (f", ... ({len(values)} in all)" if len(values) > limit else "")


def _by_layer(counts: list[int]) -> str:
    """``[97, 97, 30, 30]`` -> ``"97 in layers 1-2, then 30 in layers 3-4"``; ``[13, 13]`` -> ``"13 in each of the 2
    layers"`` (runs of equal counts; layers numbered from 1)."""
    runs: list[list[int]] = []  # [count, first layer, last layer]
    for layer, count in enumerate(counts, 1):
        if runs and runs[-1][0] == count:
            runs[-1][2] = layer
        else:
            runs.append([count, layer, layer])
    if len(runs) == 1:
        return f"{counts[0]:,} in each of the {len(counts)} layers" if len(counts) > 1 else f"{counts[0]:,} in layer 1"
    return ", then ".join(f"{count:,} in layer{f's {a}-{b}' if b > a else f' {a}'}" for count, a, b in runs)


def _decode_label(report: Report) -> str:
    """An encoded-video cache hit decodes nothing: its "decode" time is the cache read."""
    return "cache read" if report.cache.get("encoded") == "hit" else "decode"


def report_tables(report: Report, reused: str | None = None, prompt: str | None = None) -> Group:
    """Two tables: stage timings with token counts, then the run's settings and the sampled frames. ``reused`` and
    ``prompt`` replace the one-question lines of what was reused and of the prompt's tokens."""
    t, k, v = report.timings, report.tokens, report.video
    stages = Table(title="vidq report", title_justify="left", show_edge=False, pad_edge=False)
    stages.add_column("stage")
    stages.add_column("time", justify="right")
    stages.add_column("share", justify="right")
    for name, value in [
        (_decode_label(report), t.decode), ("preprocess", t.preprocess), ("vision encode", t.encode),
        ("compress", t.compress), ("prefill", t.prefill), ("generation", t.generate),
    ]:
        stages.add_row(name, _ms(value), f"{100 * value / t.total:.0f}%" if t.total else "-")
    stages.add_row("[bold]time to first token[/]", f"[bold]{_ms(t.time_to_first_token)}[/]", "", end_section=False)
    stages.add_row("[bold]total[/]", f"[bold]{_ms(t.total)}[/]", "")
    if t.wall is not None:  # the video decoded while the model loaded: what the user waited, load included
        stages.add_row("wall, from start", _ms(t.wall), "")

    facts = Table(show_header=False, show_edge=False, pad_edge=False, box=None)
    facts.add_column(style="dim")
    facts.add_column()
    options = ", ".join(f"{key}={val}" for key, val in report.method_options.items()) or "-"
    facts.add_row("model", f"{report.model} ({report.model_type}) on {report.device}, {report.dtype}")
    facts.add_row("method", f"{report.method} keep={report.keep:g} ({options})")
    if report.text_after_video:
        facts.add_row("positions", f"M-RoPE, text after the video by the {report.text_after_video!r} rule")
    facts.add_row("visual tokens", f"{k.visual_before:,} -> {k.visual_after:,} ({100 * k.ratio:.1f}%)")
    if k.asked is not None:
        search = report.token_search or {}
        probes = search.get("probes", 0)
        cost = f"{probes} trial compression{'' if probes == 1 else 's'}, {_ms(search.get('seconds', 0.0))}"
        facts.add_row("--tokens", f"{k.asked:,} asked, {k.visual_after:,} sent (keep {report.keep:.4g} found: {cost})")
    if k.visual_by_layer:
        facts.add_row("visual by layer", _by_layer(k.visual_by_layer))
    if k.decoded_by_layer:
        build = report.timings.decode_build
        facts.add_row("visual KV decoded", f"{_by_layer(k.decoded_by_layer)}, of {k.visual_after:,} cached, per answer token"
                      + (f" (selected and gathered once, {_ms(build)})" if build is not None else ""))
    facts.add_row("prompt tokens", prompt or f"{k.prompt:,} in, {k.generated:,} generated")
    facts.add_row("frames", f"{len(v.frame_indices)} of {v.total_frames} ({v.sampling}; decoder {v.decoder})")
    facts.add_row("timestamps (s)", _timestamps(v.timestamps_s))
    worker = report.decode_worker_peak_rss_bytes
    facts.add_row("peak memory", f"{_bytes(report.peak_memory_bytes)} ({report.peak_memory_kind})"
                  + (f"; decode worker {_bytes(worker)} (its own peak RSS)" if worker else ""))
    facts.add_row("reused", reused or cache_line([report]))
    for note in [*v.notes, *dict.fromkeys(report.notes)]:
        facts.add_row("note", note)
    return Group(stages, "", facts)


def cache_line(reports: list[Report]) -> str:
    """What was reused, in one line: ``encoded video: off, video prefill: miss, hit, hit`` (one per question)."""
    encoded = ", ".join(dict.fromkeys(r.cache.get("encoded", "off") for r in reports))
    # a streamed run caches the method's output, not the encoded video (flashvid_cli/cache/compressed.py)
    what = "compressed tokens" if any("streamed_chunks" in r.method_stats for r in reports) else "encoded video"
    return f"{what}: {encoded}; video prefill: {', '.join(r.cache.get('prefix', 'off') for r in reports)}"


def questions_table(reports: list[Report], questions: list[str], width: int = 80) -> Group:
    """The stages shared by several questions about one video once, then each question's own stages, in ``width``
    columns (of the console): the question's text is cut to fit, the numbers never are."""
    first = reports[0].timings
    shared = Table(title="vidq report: shared stages", title_justify="left", show_edge=False, pad_edge=False,
                   min_width=30)
    shared.add_column("stage")
    shared.add_column("time", justify="right")
    rows = [(_decode_label(reports[0]), first.decode), ("preprocess", first.preprocess), ("vision encode", first.encode)]
    if first.question_to_first_token == first.prefill:  # compressed once for every question
        rows.append(("compress", first.compress))
    for name, value in rows:
        shared.add_row(name, _ms(value))
    own = Table(title="per question (ms; own: this question's work to its first token; TTFT: from the decode's "
                "start, earlier questions included; prefix: the video's prefill reused)", title_justify="left",
                show_edge=False, pad_edge=False)
    rows = []
    for i, (r, q) in enumerate(zip(reports, questions), 1):
        t = r.timings
        ms = [f"{x * 1000:,.1f}" for x in (t.prefill, t.generate, t.question_to_first_token, t.time_to_first_token)]
        rows.append([str(i), q, *ms, f"{r.tokens.prompt:,}", f"{r.tokens.generated:,}", r.cache.get("prefix", "off")])
    # the numbers are never cut (each column as wide as its widest cell): only the question gives way, with an
    # ellipsis, so the table fits the console (80 columns when piped)
    names = ("#", "question", "prefill", "gen", "own", "TTFT", "in", "out", "prefix")
    widths = [max(len(name), *(len(row[c]) for row in rows)) for c, name in enumerate(names)]
    room = width - sum(widths) + widths[1] - 3 * (len(names) - 1)  # a cell's padding and rule: 3 characters
    for c, name in enumerate(names):
        if name == "question":
            own.add_column(name, no_wrap=True, overflow="ellipsis", max_width=max(8, min(30, room)))
        else:
            own.add_column(name, justify="left" if name in {"#", "prefix"} else "right", no_wrap=True,
                           min_width=widths[c])
    for row in rows:
        own.add_row(*row)
    return Group(shared, "", own)


def print_reports(reports: list[Report], questions: list[str], console: Console) -> None:
    """One question: :func:`report_tables`. Several: the shared stages once, a row per question, then the facts of
    the first (the video, model and method are the same for all)."""
    if len(reports) == 1:
        console.print(report_tables(reports[0]))
        return
    console.print(questions_table(reports, questions, console.width))
    console.print()
    first = dataclasses.replace(reports[0], notes=[n for r in reports for n in r.notes])
    prompts = [r.tokens.prompt for r in reports]
    span = f"{min(prompts):,}" if min(prompts) == max(prompts) else f"{min(prompts):,} to {max(prompts):,}"
    prompt = f"{span} in per question, {sum(r.tokens.generated for r in reports):,} generated in all"
    console.print(report_tables(first, reused=cache_line(reports), prompt=prompt).renderables[-1])


def print_report(report: Report, console: Console) -> None:
    console.print(report_tables(report))
