"""``vidq serve`` measured against its targets (issue 25), over HTTP with the real ``openai`` client on 127.0.0.1.

1. follow-up: a follow-up question about the same video, the conversation resent, against the first question's time
   to first token, both streamed (``random:llava-onevision-0.5b``, CPU, 8 frames, flashvid keep 0.25). The first
   request of each repeat names a fresh copy of the video, so it decodes, encodes, compresses and prefills in full;
   the follow-up finds the compressed video in memory and the conversation's KV cache. Target: <= 10%.
2. overhead: a request's time to first token over HTTP (the first SSE chunk, which the server sends with the first
   text piece) against the library's ``VideoQA.ask`` with one new token on the same warm model in the same process,
   interleaved; the server keeps nothing across requests (``kv_cache_size=0``, ``video_cache_size=0``, no encoded
   cache), so both sides pay the same stages. Target: <= 1.1x.
3. load: N concurrent clients (N = 1, 4, 16) against ``vidq serve`` as a subprocess with the demo model
   (samples/vidq-demo-llava-ov, its server defaults but flashvid keep 0.25, 8 new tokens, no encoded cache), each
   request a first question about one of the 10 demo clips (10 clips x 5 questions: more videos and conversations
   than the in-memory caches hold, so they evict): throughput, p50/p99 latency, errors, lost requests (sent, no
   response), the server's count of 200s, and the server's RSS (its process tree) sampled through the run.
   Target: 0 errors, 0 lost, memory flat.

    python benchmarks/bench_serve.py [--repeat 2] [--only followup,overhead,load] [--requests 200] [--clients 1,4,16]

``--requests`` is per concurrency level (``--requests 500`` for the issue's 500). Prints a table, then one JSON line.
CPU numbers on a machine shared with other sessions: read the ratios.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import openai  # noqa: E402

from flashvid_cli.api import AskConfig, VideoQA  # noqa: E402
from timing import cpu_context, print_tail, stat  # noqa: E402

QUESTIONS = ["How many shapes appear in the video?", "Which shape appears last?", "Which way does the square move?",
             "What colour is the circle?", "Where is the triangle at the end?"]
SMALL = "random:llava-onevision-0.5b"
DEMO = REPO / "samples" / "vidq-demo-llava-ov"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class InProcess:
    """One app served by uvicorn in a thread on 127.0.0.1, sharing an already loaded ``VideoQA``."""

    def __init__(self, qa: VideoQA, **config):
        import uvicorn

        from flashvid_cli.serve import ServeConfig, create_app
        from flashvid_cli.serve.engine import Engine

        serve = ServeConfig(model="bench", **config)
        engine = Engine(serve)
        engine.qa = qa
        self.port = _free_port()
        self.server = uvicorn.Server(uvicorn.Config(create_app(serve, engine), host="127.0.0.1", port=self.port,
                                                    log_level="error"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.02)
        self.client = openai.OpenAI(base_url=f"http://127.0.0.1:{self.port}/v1", api_key="none", max_retries=0,
                                    timeout=1800)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(60)


def _user(path: Path, question: str) -> dict:
    return {"role": "user", "content": [{"type": "video_url", "video_url": {"url": f"file://{path}"}},
                                        {"type": "text", "text": question}]}


def _streamed(client: openai.OpenAI, messages: list[dict], **kw) -> tuple[float, str, dict]:
    """(seconds from the call to the first chunk, the answer, the ``vidq`` report of the last chunk)."""
    started = time.perf_counter()
    ttft, text, report = None, "", {}
    for chunk in client.chat.completions.create(model="bench", messages=messages, stream=True, **kw):
        if ttft is None:
            ttft = time.perf_counter() - started
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        report = (chunk.model_extra or {}).get("vidq", report)
    return ttft, text, report


def followup(qa: VideoQA, repeat: int, video: Path) -> dict:
    defaults = AskConfig(method="flashvid", keep=0.25, frames=8, max_new_tokens=4)
    with tempfile.TemporaryDirectory() as tmp:
        server = InProcess(qa, defaults=defaults, allowed_local_media_path=Path(tmp))
        first, follow, prefix, reused = [], [], [], []
        try:
            for r in range(repeat + 1):  # the first round warms up
                path = Path(tmp) / f"v{r}.mp4"  # a new path: nothing of it is in the server's memory
                shutil.copy(video, path)
                messages = [_user(path, QUESTIONS[0])]
                a_ttft, answer, _ = _streamed(server.client, messages)
                messages += [{"role": "assistant", "content": answer}, {"role": "user", "content": QUESTIONS[1]}]
                b_ttft, _, report = _streamed(server.client, messages)
                if r:
                    first.append(a_ttft)
                    follow.append(b_ttft)
                    prefix.append(report["report"]["cache"]["prefix"])
                    reused.append(report["report"]["cache"]["reused_tokens"])
        finally:
            server.stop()
    return {"first_ttft_s": stat(first), "followup_ttft_s": stat(follow), "followup_prefix": prefix,
            "followup_reused_tokens": reused, "ratio": statistics.median(follow) / statistics.median(first),
            "ratios": [f / s for f, s in zip(follow, first)], "target": 0.10,
            "setup": f"{SMALL}, cpu float32, 8 frames, flashvid keep 0.25, 4 new tokens, streamed, client-side TTFT"}


def overhead(qa: VideoQA, repeat: int, video: Path) -> dict:
    defaults = AskConfig(method="flashvid", keep=0.25, frames=8, max_new_tokens=1)
    qa.cache = None
    server = InProcess(qa, defaults=defaults, allowed_local_media_path=video.parent, kv_cache_size=0,
                       video_cache_size=0)
    library, http = [], []
    try:
        qa.ask(video, QUESTIONS[0], defaults)  # warm-up, both sides
        _streamed(server.client, [_user(video, QUESTIONS[0])])
        for _ in range(repeat):  # interleaved
            started = time.perf_counter()
            qa.ask(video, QUESTIONS[0], defaults)
            library.append(time.perf_counter() - started)
            http.append(_streamed(server.client, [_user(video, QUESTIONS[0])])[0])
    finally:
        server.stop()
    return {"library_ttft_s": stat(library), "http_ttft_s": stat(http),
            "ratio": statistics.median(http) / statistics.median(library),
            "ratios": [h / a for a, h in zip(library, http)], "target": 1.1,
            "setup": f"{SMALL}, cpu float32, 8 frames, flashvid keep 0.25; library: wall time of ask with 1 new token; "
                     "http: call to first SSE chunk; server keeps no video or prompt cache"}


def _tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and its children (the decode worker), 0 when it is gone."""
    import psutil

    try:
        proc = psutil.Process(pid)
        return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)])
    except psutil.Error:
        return 0


def _served_200(url: str) -> int:
    import httpx

    for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines():
        if line.startswith('vidq_requests_total{status="200"}'):
            return int(float(line.split()[-1]))
    return 0


def load(requests: int, levels: list[int]) -> dict:
    import httpx

    clips = sorted((REPO / "samples" / "demo" / "clips").glob("*.mp4"))
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "flashvid_cli", "serve", "--model", str(DEMO), "--port", str(port), "--device", "cpu",
           "--allowed-local-media-path", str(clips[0].parent), "--method", "flashvid", "--keep", "0.25",
           "--max-new-tokens", "8", "--no-cache"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    out: dict = {"levels": [], "command": " ".join(cmd[1:])}
    samples: list[tuple[float, int]] = []  # (seconds since the first request, rss bytes)
    stop = threading.Event()
    try:
        deadline = time.time() + 600
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"vidq serve exited with {proc.returncode}: {proc.stderr.read()[-2000:]}")
            try:
                if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                raise SystemExit("vidq serve did not become ready in 600 s")
            time.sleep(0.5)
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=600)
        model = client.models.list().data[0].id

        def one(i: int) -> tuple[str, float]:
            messages = [_user(clips[i % len(clips)], QUESTIONS[(i // len(clips)) % len(QUESTIONS)])]
            started = time.perf_counter()
            try:
                client.chat.completions.create(model=model, messages=messages)
                return "ok", time.perf_counter() - started
            except openai.APIStatusError:
                return "error", time.perf_counter() - started
            except openai.APIError:  # connection refused, reset or timed out: no response came back
                return "lost", time.perf_counter() - started

        for i in range(len(clips)):  # warm-up: every clip once
            one(i)
        out["rss_after_warmup_mb"] = _tree_rss(proc.pid) / 2**20
        t0 = time.perf_counter()

        def sample() -> None:
            while not stop.wait(0.5):
                samples.append((time.perf_counter() - t0, _tree_rss(proc.pid)))

        threading.Thread(target=sample, daemon=True).start()
        sent = 0
        for n in levels:
            served_before = _served_200(url)
            started = time.perf_counter()
            with ThreadPoolExecutor(n) as pool:
                results = list(pool.map(one, range(sent, sent + requests)))
            wall = time.perf_counter() - started
            sent += requests
            ok = [s for kind, s in results if kind == "ok"]
            ok_sorted = sorted(ok)
            out["levels"].append({
                "clients": n, "requests": requests, "ok": len(ok),
                "errors": sum(kind == "error" for kind, _ in results),
                "lost": sum(kind == "lost" for kind, _ in results),
                "served_200": _served_200(url) - served_before, "wall_s": wall, "throughput_rps": len(ok) / wall,
                "p50_s": statistics.median(ok_sorted) if ok else None,
                "p99_s": ok_sorted[min(len(ok) - 1, int(0.99 * len(ok)))] if ok else None,
                "rss_end_mb": _tree_rss(proc.pid) / 2**20})
    finally:
        stop.set()
        proc.terminate()
        try:
            out["exit_code"] = proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            out["exit_code"] = "killed"
    rss = [b / 2**20 for _, b in samples if b]
    tenth = max(1, len(rss) // 10)
    out["rss_mb"] = {"first_tenth_median": statistics.median(rss[:tenth]) if rss else None,
                     "last_tenth_median": statistics.median(rss[-tenth:]) if rss else None,
                     "max": max(rss) if rss else None, "samples": len(rss)}
    out["setup"] = (f"demo model as a subprocess, cpu, flashvid keep 0.25, 8 new tokens, no encoded cache, "
                    f"{len(clips)} clips x {len(QUESTIONS)} questions round robin, {requests} requests per level")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--only", default="followup,overhead,load")
    parser.add_argument("--requests", type=int, default=200, help="requests per concurrency level (500: the issue's)")
    parser.add_argument("--clients", default="1,4,16")
    parser.add_argument("--video", default=str(REPO / "samples" / "sample.mp4"))
    args = parser.parse_args()
    parts = args.only.split(",")
    video = Path(args.video).resolve()
    out: dict = cpu_context()
    if "followup" in parts or "overhead" in parts:
        qa = VideoQA(SMALL, device="cpu", cache=None)
        if "followup" in parts:
            out["followup"] = followup(qa, args.repeat, video)
        if "overhead" in parts:
            out["overhead"] = overhead(qa, args.repeat, video)
    if "load" in parts:
        out["load"] = load(args.requests, [int(n) for n in args.clients.split(",")])
    if "followup" in out or "overhead" in out:
        print(f"{'measure':<36} {'baseline (median s)':>20} {'measured (median s)':>20} {'ratio':>7} {'target':>7}")
    rows = [("followup", "follow-up TTFT / first TTFT (HTTP)", "first_ttft_s", "followup_ttft_s"),
            ("overhead", "HTTP TTFT / VideoQA.ask TTFT", "library_ttft_s", "http_ttft_s")]
    for key, label, base, new in rows:
        if key in out:
            r = out[key]
            print(f"{label:<36} {r[base]['median']:>20.3f} {r[new]['median']:>20.3f} {r['ratio']:>7.3f} "
                  f"{r['target']:>7.2f}")
    if "load" in out:
        print(f"\n{'clients':>7} {'requests':>8} {'ok':>5} {'errors':>6} {'lost':>5} {'200s':>5} {'req/s':>7} "
              f"{'p50 s':>7} {'p99 s':>7} {'RSS MB':>7}")
        for r in out["load"]["levels"]:
            print(f"{r['clients']:>7} {r['requests']:>8} {r['ok']:>5} {r['errors']:>6} {r['lost']:>5} "
                  f"{r['served_200']:>5} {r['throughput_rps']:>7.2f} {r['p50_s'] or 0:>7.2f} {r['p99_s'] or 0:>7.2f} "
                  f"{r['rss_end_mb']:>7.0f}")
        m = {k: "-" if v is None else f"{v:.0f}" for k, v in out["load"]["rss_mb"].items()}  # None: no sample
        print(f"server RSS (process tree): {out['load']['rss_after_warmup_mb']:.0f} MB after warm-up, median "
              f"{m['first_tenth_median']} MB over the first tenth of the run, {m['last_tenth_median']} MB "
              f"over the last, max {m['max']} MB; exit code {out['load']['exit_code']}")
    print_tail(out, args.repeat)


if __name__ == "__main__":
    main()
