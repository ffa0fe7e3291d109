"""The server's Prometheus metrics, in a registry of their own (one per app, so tests may start several)."""

from __future__ import annotations

from typing import Any

_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
STAGES = ("decode", "preprocess", "encode", "compress", "prefill", "generate")


class Metrics:
    """Histograms of time to first token, time per output token, queue time and stage times; counters of cache
    hits and misses (encoded videos on disk, compressed videos in memory, prompt prefixes) and requests by status."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = r = CollectorRegistry()
        self.ttft = Histogram("vidq_time_to_first_token_seconds", "Request arrival to its first token, queue included",
                              buckets=_SECONDS, registry=r)
        self.tpot = Histogram("vidq_time_per_output_token_seconds", "Seconds per generated token after the first",
                              buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0), registry=r)
        self.queue = Histogram("vidq_queue_time_seconds", "Wait for the model before a request starts",
                               buckets=_SECONDS, registry=r)
        self.stage = Histogram("vidq_stage_seconds", "Seconds of each stage of a request", ["stage"],
                               buckets=_SECONDS, registry=r)
        self.cache = Counter("vidq_cache_total", "Cache lookups by layer and result", ["layer", "result"], registry=r)
        self.requests = Counter("vidq_requests_total", "Chat completion requests by HTTP status", ["status"],
                                registry=r)
        self.prompt_tokens = Counter("vidq_prompt_tokens_total", "Prompt tokens, by whether they were prefilled",
                                     ["source"], registry=r)
        self.completion_tokens = Counter("vidq_completion_tokens_total", "Generated tokens", registry=r)
        self.in_flight = Gauge("vidq_requests_in_flight", "Requests running or waiting", registry=r)

    def observe(self, outcome: Any, queued_s: float, ttft_s: float) -> None:
        report = outcome.result.report
        t = report.timings
        self.queue.observe(queued_s)
        self.ttft.observe(ttft_s)
        for stage in STAGES:
            self.stage.labels(stage).observe(getattr(t, stage))
        generated = report.tokens.generated
        if generated > 1:
            self.tpot.observe(t.generate / (generated - 1))
        self.cache.labels("video_memory", outcome.video_memory).inc()
        if outcome.video_memory == "miss":
            self.cache.labels("encoded", report.cache.get("encoded", "off")).inc()
        self.cache.labels("prefix", report.cache.get("prefix", "off")).inc()
        prompt = report.tokens.prompt
        self.prompt_tokens.labels("cache").inc(outcome.reused_tokens)
        self.prompt_tokens.labels("prefill").inc(max(prompt - outcome.reused_tokens, 0))
        self.completion_tokens.inc(len(outcome.result.token_ids))

    def text(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST
