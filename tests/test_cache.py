"""The on-disk cache of encoded videos (flashvid_cli/cache/) and ``vidq cache info|clear``.

Round trips are compared bit for bit (NaN, -0.0 and subnormals included), faults are made for real: a writer
killed with SIGKILL mid-write, two processes writing one entry at once, a directory that cannot be created.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from flashvid_cli import cache as cache_mod
from flashvid_cli.cache import entry as entry_mod
from flashvid_cli.cache import (
    DEFAULT_MAX_BYTES, CacheError, CacheKey, EncodedCache, fingerprint, model_fingerprint, parse_size,
    sampling_request,
)
from flashvid_cli.cli import app
from flashvid_cli.kernels import Grid
from flashvid_cli.pipelines.base import EncodedVideo

REPO = Path(__file__).resolve().parents[1]
MODEL = {"kind": "directory", "path": "/models/x", "files": {"model.safetensors": "ab" * 32}}
PREPROCESS = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "patch_size": 14}


def encoded_video(dtype: torch.dtype = torch.float32, importance: bool = True, metric: bool = True,
                  T: int = 3, H: int = 2, W: int = 3, D: int = 8, seed: int = 0) -> EncodedVideo:
    """A made-up EncodedVideo with awkward values (NaN, inf, -0.0, subnormals) and both families' meta."""
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(T, H * W, D, generator=g).to(dtype)  # [T, N, D]
    flat = feats.view(-1)
    flat[:5] = torch.tensor([float("nan"), float("inf"), -0.0, 1e-40, -float("inf")]).to(dtype)
    return EncodedVideo(
        feats=feats,
        grid=Grid(T, H, W),
        importance=torch.rand(T, H * W, generator=g) if importance else None,  # [T, N] float32
        metric=torch.randn(T, H * W, 4, generator=g) if metric else None,  # [T, N, Dk] float32
        meta={"newline": torch.nn.Parameter(torch.randn(D, generator=g).to(dtype), requires_grad=False),
              "grid_thw": torch.tensor([[T * 2, H * 2, W * 2]]), "second_per_grid": 2 / 3, "note": "x"},
    )


def bits(t: torch.Tensor) -> torch.Tensor:
    """The tensor's raw bytes, so NaN == NaN and -0.0 != 0.0."""
    return t.detach().contiguous().view(-1).view(torch.uint8)


def assert_bit_equal(a: EncodedVideo, b: EncodedVideo) -> None:
    assert a.grid == b.grid
    for name in ("feats", "importance", "metric"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            assert x.dtype == y.dtype and x.shape == y.shape and torch.equal(bits(x), bits(y)), name
    assert a.meta.keys() == b.meta.keys()
    for name, value in a.meta.items():
        if isinstance(value, torch.Tensor):
            other = b.meta[name]
            assert other.dtype == value.dtype and other.shape == value.shape and torch.equal(bits(value), bits(other))
        else:
            assert b.meta[name] == value and type(b.meta[name]) is type(value), name


@pytest.fixture
def video(tmp_path: Path) -> Path:
    path = tmp_path / "clip.mp4"
    path.write_bytes(os.urandom(4096))
    return path


@pytest.fixture
def cache(tmp_path: Path) -> EncodedCache:
    return EncodedCache(tmp_path / "cache")


def make_key(cache: EncodedCache, video: Path, need=(), indices=(0, 5, 9), **changes) -> CacheKey:
    parts = {"sampling": sampling_request(frames=3), "model": MODEL, "dtype": torch.float32, "device": "cpu",
             "preprocess": PREPROCESS}
    parts.update(changes)
    return cache.key(video, need=need, frame_indices=indices, **parts)


def entry_files(cache: EncodedCache) -> list[Path]:
    return sorted(cache.root.glob("*.safetensors"))


# -- round trip ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("optional", [(True, True), (False, False), (True, False), (False, True)])
def test_round_trip_is_bit_exact(cache, video, dtype, optional):
    encoded = encoded_video(dtype, *optional)
    need = {name for name, on in zip(("importance", "metric"), optional) if on}
    key = make_key(cache, video, need=need, dtype=dtype)
    assert cache.get(key) is None
    assert cache.put(key, encoded, video={"timestamps": [0.0, 0.5, 1.0], "decoder": "pyav"})
    hit = cache.get(key)
    assert hit is not None
    assert_bit_equal(encoded, hit.encoded)
    assert hit.frame_indices == [0, 5, 9] and hit.video == {"timestamps": [0.0, 0.5, 1.0], "decoder": "pyav"}
    assert hit.has == need
    assert hit.bytes == entry_files(cache)[0].stat().st_size


def test_lookup_before_decoding_returns_the_stored_indices(cache, video):
    cache.put(make_key(cache, video), encoded_video())
    hit = cache.get(make_key(cache, video, indices=None))
    assert hit is not None and hit.frame_indices == [0, 5, 9]


def test_other_frame_indices_are_a_miss_and_the_entry_is_dropped(cache, video):
    cache.put(make_key(cache, video), encoded_video())
    assert cache.get(make_key(cache, video, indices=(0, 4, 9))) is None
    assert entry_files(cache) == []


def test_real_encodings_of_both_families_round_trip(tiny_model, sample_video, tmp_path):
    """A real adapter's EncodedVideo (LLaVA's newline Parameter, Qwen's grid_thw and second_per_grid) comes back
    bit for bit, and the adapter builds the same prompt inputs and the same greedy tokens from the hit."""
    from flashvid_cli.api import VideoQA
    from flashvid_cli.kernels import build
    from flashvid_cli.pipelines.generation import GenerationOptions
    from flashvid_cli.pipelines.video import decode

    pipe = VideoQA(str(tiny_model), device="cpu").pipeline
    decoded = decode(sample_video, frames=4, timeout_s=None)
    with torch.inference_mode():
        encoded = pipe.encode(pipe.preprocess(decoded.frames, decoded.timestamps), need=frozenset(cache_mod.OPTIONAL))
    cache = EncodedCache(tmp_path / "cache")
    key = cache.key(sample_video, sampling=sampling_request(frames=4), model=model_fingerprint(str(tiny_model)),
                    dtype=pipe.dtype, device=pipe.device, preprocess=pipe.preprocess_config)
    assert cache.put(key.with_indices(decoded.indices), encoded, video={"timestamps": decoded.timestamps})
    hit = cache.get(key, device=pipe.device)
    assert hit is not None and hit.frame_indices == list(decoded.indices)
    assert_bit_equal(encoded, hit.encoded)
    method = build("flashvid", 0.5, model_type=pipe.model_type)
    answers = []
    for enc in (encoded, hit.encoded):
        with torch.inference_mode():
            compressed = method(enc.feats, enc.grid, enc.importance, enc.metric)
            answers.append(pipe.generate(pipe.inputs(enc, compressed, "What is it?"), GenerationOptions(4)).token_ids)
    assert answers[0] == answers[1]


# -- one entry for every method --------------------------------------------------------------------------------------
def test_missing_optional_tensor_is_a_miss_and_the_rewrite_holds_the_union(cache, video):
    with_importance = encoded_video(importance=True, metric=False)
    cache.put(make_key(cache, video, need={"importance"}), with_importance)
    assert cache.get(make_key(cache, video)) is not None
    assert cache.get(make_key(cache, video, need={"metric"})) is None  # lacks the metric: a miss
    with_metric = encoded_video(importance=False, metric=True)  # same features, only what this method needs
    assert cache.put(make_key(cache, video, need={"metric"}), with_metric)
    hit = cache.get(make_key(cache, video, need={"importance", "metric"}))
    assert hit is not None
    assert torch.equal(hit.encoded.importance, with_importance.importance)
    assert torch.equal(hit.encoded.metric, with_metric.metric)
    assert len(entry_files(cache)) == 1


def test_union_needs_the_same_features(cache, video):
    cache.put(make_key(cache, video), encoded_video(importance=True, metric=False, seed=0))
    cache.put(make_key(cache, video), encoded_video(importance=False, metric=True, seed=1))
    hit = cache.get(make_key(cache, video))
    assert hit.encoded.importance is None and hit.encoded.metric is not None


# -- keys ------------------------------------------------------------------------------------------------------------
def test_key_parts(cache, video):
    base = make_key(cache, video)
    assert make_key(cache, video, need={"metric"}).digest == base.digest  # one entry serves every method
    for change in ({"dtype": torch.bfloat16}, {"sampling": sampling_request(frames=4)},
                   {"preprocess": {**PREPROCESS, "patch_size": 16}}, {"model": {**MODEL, "path": "/models/y"}}):
        assert make_key(cache, video, **change).digest != base.digest, change
    exact = [sampling_request(frames=3, decoder=d) for d in ("decord", "pyav")]
    assert exact[0] != exact[1]  # the same pictures, not the same bytes: decord converts colour its own way
    keyframe = [sampling_request(frames=3, seek="keyframe", decoder=d) for d in ("decord", "pyav")]
    assert keyframe[0] != keyframe[1] and keyframe[0] != exact[0]
    assert base.fields["environment"]["format"] == cache_mod.FORMAT_VERSION
    assert base.fields["device"] == "cpu"


def test_missing_video_is_a_video_error(cache, tmp_path):
    from flashvid_cli.pipelines.errors import VideoError

    with pytest.raises(VideoError, match="nope.mp4"):
        make_key(cache, tmp_path / "nope.mp4")


def test_fingerprint_sees_content_changes(tmp_path):
    big = tmp_path / "big.bin"
    size = cache_mod.FULL_HASH_BELOW + 8 * 2**20  # large enough to be sampled, not hashed whole
    big.write_bytes(os.urandom(size))
    st = big.stat()
    before = fingerprint(big)

    def rewrite_byte(offset: int) -> str:
        with open(big, "r+b") as f:
            f.seek(offset)
            byte = f.read(1)
            f.seek(offset)
            f.write(bytes([byte[0] ^ 0xFF]))
        os.utime(big, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size, same mtime
        assert big.stat().st_size == st.st_size and big.stat().st_mtime_ns == st.st_mtime_ns
        return fingerprint(big)

    ranges = cache_mod._ranges(size)
    middle = ranges[len(ranges) // 2]
    changed = rewrite_byte(middle[0] + middle[1] // 2)
    assert changed != before
    # The documented blind spot: a byte outside every sampled range, with the mtime forged back, is not seen.
    gap = ranges[len(ranges) // 2][0] + ranges[len(ranges) // 2][1] + 10
    assert not any(o <= gap < o + n for o, n in ranges)
    assert rewrite_byte(gap) == changed
    os.utime(big, ns=(st.st_atime_ns, st.st_mtime_ns + 1))  # a touch alone changes it too
    assert fingerprint(big) != changed

    small = tmp_path / "small.bin"
    small.write_bytes(b"\0" * 4096)
    st = small.stat()
    first = fingerprint(small)
    small.write_bytes(b"\0" * 2048 + b"\1" + b"\0" * 2047)  # small files are hashed whole: any byte counts
    os.utime(small, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert fingerprint(small) != first


def test_video_changed_after_caching_is_a_miss(cache, video):
    cache.put(make_key(cache, video), encoded_video())
    assert cache.get(make_key(cache, video)) is not None
    video.write_bytes(os.urandom(4096))
    assert cache.get(make_key(cache, video)) is None


def test_model_fingerprint(tmp_path):
    from safetensors.torch import save_file

    snapshot = tmp_path / "hub" / "models--org--tiny" / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text('{"model_type": "llava_onevision"}')
    weights = snapshot / "model.safetensors"
    save_file({"w": torch.zeros(64)}, weights)
    st = weights.stat()
    first = model_fingerprint(snapshot)
    assert first["repo"] == "org/tiny" and first["revision"] == "0123abcd"
    assert set(first["files"]) == {"config.json", "model.safetensors"}
    save_file({"w": torch.ones(64)}, weights)  # retrained in place: same names, shapes and size
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert model_fingerprint(snapshot)["files"]["model.safetensors"] != first["files"]["model.safetensors"]
    random = model_fingerprint("random:llava-onevision-0.5b")
    assert random["kind"] == "random" and random == model_fingerprint("random:llava-onevision-0.5b")


# -- bad entries -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("damage", ["truncate", "flip_data", "garbage_header", "empty", "foreign", "bad_header"])
def test_bad_entry_is_ignored_deleted_and_rewritten(cache, video, damage):
    key = make_key(cache, video)
    encoded = encoded_video(torch.bfloat16)
    cache.put(key, encoded)
    [path] = entry_files(cache)
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "flip_data":
        path.write_bytes(data[:-3] + bytes([data[-3] ^ 0x01]) + data[-2:])
    elif damage == "garbage_header":
        path.write_bytes(data[:8] + b"{" * 40 + data[48:])
    elif damage == "foreign":  # a sound safetensors file that vidq did not write
        from safetensors.torch import save_file
        save_file({"feats": encoded.feats}, path)
    elif damage == "bad_header":  # vidq's metadata, but not a whole header
        from safetensors.torch import save_file
        save_file({"feats": encoded.feats}, path, metadata={"vidq": json.dumps({"format": 1, "checksums": {
            "feats": entry_mod._checksum(encoded.feats)}})})
    else:
        path.write_bytes(b"")
    assert cache.get(key) is None
    assert not path.exists()
    assert cache.put(key, encoded)
    assert_bit_equal(encoded, cache.get(key).encoded)


def test_entry_under_another_keys_name_is_not_trusted(cache, video):
    key_a, key_b = make_key(cache, video), make_key(cache, video, dtype=torch.bfloat16)
    cache.put(key_a, encoded_video())
    [path] = entry_files(cache)
    os.replace(path, cache.root / f"{key_b.digest}.safetensors")  # a stale file / hash collision
    assert cache.get(key_b) is None
    assert entry_files(cache) == []


KILL_WRITER = textwrap.dedent("""
    import json, os, sys, time, torch
    from flashvid_cli.cache import CacheKey, EncodedCache, files
    from flashvid_cli.kernels import Grid
    from flashvid_cli.pipelines.base import EncodedVideo

    files._WRITE_CHUNK = 2**20
    real_write = os.write
    def slow_write(fd, data):  # a slow disk: 1 MiB per 50 ms, so the kill lands mid-write
        time.sleep(0.05)
        return real_write(fd, data)
    os.write = slow_write
    key = CacheKey(json.loads(sys.argv[2]), tuple(range(8)))
    feats = torch.randn(8, 1024, 1024)  # 32 MiB
    print(EncodedCache(sys.argv[1]).put(key, EncodedVideo(feats, Grid(8, 32, 32))), flush=True)
""")


def _written_bytes(root) -> int:
    """Bytes in the entry's temporary file so far, 0 before it exists. The store's own write check
    (``.probe-*.tmp``, made and removed as the writer opens the cache) matches the same pattern and may
    vanish between the listing and the stat: CI once failed on exactly that race."""
    for path in root.glob(".*.tmp"):
        if not path.name.startswith(".probe-"):
            try:
                return path.stat().st_size
            except FileNotFoundError:
                return 0
    return 0


@pytest.mark.slow
def test_kill_9_mid_write_leaves_nothing_that_loads(cache, tmp_path):
    fields = {"test": "kill"}
    child = subprocess.Popen([sys.executable, "-c", KILL_WRITER, str(cache.root), json.dumps(fields)],
                             env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if _written_bytes(cache.root) >= 4 * 2**20:
                break
            assert child.poll() is None, "the writer ended before it could be killed"
            time.sleep(0.01)
        else:
            pytest.fail("the writer never started writing")
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == -signal.SIGKILL
    [partial] = cache.root.glob(".*.tmp")
    assert 4 * 2**20 <= partial.stat().st_size < 32 * 2**20  # really killed mid-write
    key = CacheKey(fields, tuple(range(8)))
    assert cache.get(key) is None
    info = cache.info()
    assert info.entries == 0 and info.temporary_files == 1
    encoded = EncodedVideo(torch.randn(8, 4, 4), Grid(8, 2, 2))
    assert cache.put(key, encoded)  # the next write removes the dead writer's partial file
    assert list(cache.root.glob(".*.tmp")) == []
    assert_bit_equal(encoded, cache.get(key).encoded)


CONCURRENT_WRITER = textwrap.dedent("""
    import json, os, sys, time, torch
    from flashvid_cli.cache import CacheKey, EncodedCache
    from flashvid_cli.kernels import Grid
    from flashvid_cli.pipelines.base import EncodedVideo

    root, fields, go = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
    g = torch.Generator().manual_seed(0)  # both writers hold the same encoding
    encoded = EncodedVideo(torch.randn(8, 256, 1024, generator=g).bfloat16(), Grid(8, 16, 16),
                           importance=torch.rand(8, 256, generator=g))
    cache = EncodedCache(root)
    while not os.path.exists(go):
        time.sleep(0.001)
    print(all(cache.put(CacheKey(fields, (1, 2, 3)), encoded) for _ in range(5)), flush=True)
""")


@pytest.mark.slow
def test_two_processes_writing_one_entry_both_succeed(cache, tmp_path):
    fields = {"test": "race"}
    go = tmp_path / "go"
    writers = [subprocess.Popen([sys.executable, "-c", CONCURRENT_WRITER, str(cache.root), json.dumps(fields),
                                 str(go)], env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE,
                                text=True) for _ in range(2)]
    time.sleep(0.5)
    go.touch()
    outputs = [w.communicate(timeout=300)[0].strip() for w in writers]
    assert [w.returncode for w in writers] == [0, 0] and outputs == ["True", "True"]
    assert len(entry_files(cache)) == 1 and list(cache.root.glob(".*.tmp")) == []
    hit = cache.get(CacheKey(fields, (1, 2, 3), frozenset({"importance"})))
    g = torch.Generator().manual_seed(0)
    assert hit is not None and torch.equal(hit.encoded.feats, torch.randn(8, 256, 1024, generator=g).bfloat16())


# -- size cap --------------------------------------------------------------------------------------------------------
def test_lru_eviction_keeps_the_most_recently_used(tmp_path, video):
    probe = EncodedCache(tmp_path / "probe")
    probe.put(make_key(probe, video), encoded_video())
    entry_size = entry_files(probe)[0].stat().st_size
    cache = EncodedCache(tmp_path / "cache", max_bytes=int(entry_size * 2.5))  # room for two entries
    keys = [make_key(cache, video, sampling=sampling_request(frames=n)) for n in (1, 2, 3)]
    now = time.time_ns()
    for age, key in zip((300, 200), keys[:2]):
        assert cache.put(key, encoded_video())
        path = cache.root / f"{key.digest}.safetensors"
        os.utime(path, ns=(now - age * 10**9, now - age * 10**9))  # 0 used before 1
    assert cache.get(keys[0]) is not None  # a hit makes 0 the most recently used
    assert cache.put(keys[2], encoded_video())
    assert cache.get(keys[0]) is not None and cache.get(keys[2]) is not None
    assert cache.get(keys[1]) is None
    assert cache.info().bytes <= cache.max_bytes


def test_entry_larger_than_the_cap_is_not_written(tmp_path, video):
    cache = EncodedCache(tmp_path / "cache", max_bytes=100)
    assert not cache.put(make_key(cache, video), encoded_video())
    assert entry_files(cache) == []


def test_cap_zero_is_off(tmp_path, video):
    cache = EncodedCache(tmp_path / "cache", max_bytes="0")
    assert not cache.enabled and not cache.put(make_key(cache, video), encoded_video())
    assert cache.get(make_key(cache, video)) is None and cache.warning is None


def test_parse_size():
    assert parse_size("2GB") == 2 * 10**9
    assert parse_size("500MiB") == 500 * 2**20
    assert parse_size("1.5G") == int(1.5 * 2**30)
    assert parse_size("0") == 0 and parse_size(123) == 123
    for bad in ("lots", "-1GB", "5 parsecs", ""):
        with pytest.raises(CacheError, match="--cache-size"):
            parse_size(bad)


# -- unwritable directory --------------------------------------------------------------------------------------------
def test_unwritable_directory_warns_once_and_never_crashes(tmp_path, video, caplog):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with caplog.at_level(logging.WARNING, logger="vidq.cache"):
        cache = EncodedCache(blocker / "cache")  # cannot be created, even by root
        key = make_key(cache, video)
        for _ in range(3):
            assert cache.get(key) is None
            assert cache.put(key, encoded_video()) is False
    assert not cache.enabled
    assert cache.warning is not None and "\n" not in cache.warning and str(blocker / "cache") in cache.warning
    assert [r.getMessage() for r in caplog.records] == [cache.warning]


def test_directory_gone_during_a_run_warns_once(tmp_path, video, caplog):
    cache = EncodedCache(tmp_path / "cache")
    key = make_key(cache, video)
    cache.root.rmdir()
    (tmp_path / "cache").write_text("now a file")
    with caplog.at_level(logging.WARNING, logger="vidq.cache"):
        assert cache.put(key, encoded_video()) is False
        assert cache.put(key, encoded_video()) is False
    assert len(caplog.records) == 1 and not cache.enabled


# -- the CLI ---------------------------------------------------------------------------------------------------------
def test_cli_info_and_clear(tmp_path, video, monkeypatch):
    monkeypatch.setenv("VIDQ_CACHE_DIR", str(tmp_path / "cli-cache"))
    cache = EncodedCache()
    assert cache.root == tmp_path / "cli-cache"
    for n in (1, 2):
        cache.put(make_key(cache, video, sampling=sampling_request(frames=n)), encoded_video())
    total = sum(p.stat().st_size for p in entry_files(cache))
    (cache.root / ".left-by-a-killed-writer.tmp").write_bytes(b"x")
    runner = CliRunner()
    result = runner.invoke(app, ["cache", "info"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()  # piped: every line but the directory's (a path is never cut) fits 80
    assert all(len(line) <= 80 for line in lines if not line.startswith("directory")), result.output
    said = " ".join(result.output.split())
    assert "1 temporary file(s)" in said and "`vidq cache clear` removes all" in said
    assert str(tmp_path / "cli-cache") in result.output and "entries    2" in result.output
    assert f"({total} bytes)" in result.output and "10.0 GiB" in result.output
    result = runner.invoke(app, ["cache", "info", "--json"])
    assert json.loads(result.output) == {"directory": str(tmp_path / "cli-cache"), "entries": 2, "bytes": total,
                                         "max_bytes": DEFAULT_MAX_BYTES, "temporary_files": 1, "writable": True}
    result = runner.invoke(app, ["cache", "clear"])
    assert result.exit_code == 0 and result.output.startswith("removed 2 entries")
    assert entry_files(cache) == []
    assert "entries    0" in runner.invoke(app, ["cache", "info"]).output
    cache.put(make_key(cache, video, sampling=sampling_request(frames=1)), encoded_video())
    assert runner.invoke(app, ["cache", "clear"]).output.startswith("removed 1 entry,")  # not "1 entries"


def test_cli_info_on_an_unwritable_directory(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    monkeypatch.setenv("VIDQ_CACHE_DIR", str(blocker / "cache"))
    result = CliRunner().invoke(app, ["cache", "info"])
    assert result.exit_code == 0 and "entries    0" in result.output
    assert result.output.count("not writable") == 1
    assert "Traceback" not in result.output


def test_views_into_shared_storage_round_trip(cache, video):
    """Adapters hand out views (a slice of the pooled output, a Parameter); the entry must still be exact."""
    base = torch.randn(9, 6, 5)
    encoded = EncodedVideo(base[1:4], Grid(3, 2, 3), importance=base[4:7, :, 0], metric=base[::3],
                           meta={"newline": base[0, 0]})
    assert cache.put(make_key(cache, video), encoded)
    assert_bit_equal(encoded, cache.get(make_key(cache, video)).encoded)
