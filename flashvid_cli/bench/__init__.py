"""Compare compression methods side by side: every method x keep on every video, one loaded model.

    qa = VideoQA(model)
    result = run_bench(qa, ["clip.mp4"], BenchConfig(methods=("flashvid", "none"), keeps=(0.1, 0.25)))
    run_bench(qa, ["clip.mp4"], BenchConfig(tokens=(64, 128)))  # every method at 64 and at 128 visual tokens
    result.to_dict()            # {"environment": {...}, "rows": [...]}
    plot_bench(result, "bench.png")

Each row is run ``warmup`` times untimed, then ``repeat`` times; every stage time is reported as the median
with min and max over the repeats. Each repeat is one ``VideoQA.ask_many`` of the question and a follow-up
(``follow_up_ttft``: the follow-up's time to first token on the same prepared video), i.e. the same
prepare -> compress -> answer stages as ``vidq ask``, each time read after a device synchronisation.
Methods that ignore ``keep`` (``none``) get one row per video, at keep 1; every other method one row per keep, or
with ``tokens`` one row per visual-token count (each method at the keep that comes closest on each clip). The
methods default to every registered one; answers are compared with the baseline method's (``none``).

Modules: ``runs`` (which runs to make; shared with eval), ``measure`` (timing them), ``results`` (the rows),
``provenance`` (the environment record), ``render`` (a row's labels), ``plot`` (the PNG).
"""

from .measure import LanguageModelSize, agreement, prefill_flops, run_bench
from .plot import STAGE_COLOURS, plot_bench
from .provenance import cpu_name, environment
from .render import agreement_label, plural, row_label, stage_segments
from .results import STAGES, TTFT_STAGES, Agreement, BenchResult, BenchRow, Divergence, Stat
from .runs import (
    DEFAULT_FOLLOW_UP, DEFAULT_KEEPS, DEFAULT_QUESTION, BenchConfig, Run, baseline_method, check_options, check_runs,
    default_methods, is_trait, method_options, method_runs, prunes_in_llm,
)

__all__ = [
    "DEFAULT_FOLLOW_UP", "DEFAULT_KEEPS", "DEFAULT_QUESTION", "STAGES", "STAGE_COLOURS", "TTFT_STAGES", "Agreement",
    "BenchConfig", "BenchResult", "BenchRow", "Divergence", "LanguageModelSize", "Run", "Stat", "agreement",
    "agreement_label", "baseline_method", "check_options", "check_runs", "cpu_name", "default_methods", "environment",
    "is_trait", "method_options", "method_runs", "plot_bench", "plural", "prefill_flops", "prunes_in_llm",
    "row_label", "run_bench", "stage_segments",
]
