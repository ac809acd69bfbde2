"""``soundwatch bench features``: our log-mel against librosa and a bare floor, and the stream's rate.

All front ends run on the same audio in the same process, interleaved, each best of ``repeats``
(``time.process_time``, CPU seconds; BLAS limited to one thread so a threaded matmul cannot hide CPU
time). ``librosa`` is librosa's best case, one batched call on all clips (it is vectorised over
leading dimensions too); ``librosa_per_clip`` is the usual one call per file. The floor is the least
any log-mel must do: a float32 batched real FFT of pre-framed audio (numpy/scipy), ``|X|^2`` and a
dense mel matmul — no padding, window, float64 or log. Because our FFT is ducc0's, which beats
scipy's, ``floor_ducc0`` repeats the floor with ducc0's float32 FFT, so ``ratio_to_floor_ducc0`` shows
what is left once the FFT library is the same. We compute the FFT in float64 (see :mod:`soundwatch.audio.logmel`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import ducc0
import numpy as np
import scipy.fft
from threadpoolctl import threadpool_limits

from soundwatch.audio.audio_io import read_audio
from soundwatch.audio.logmel import complete_frames, log_mel, mel_filterbank
from soundwatch.audio.windows import n_windows
from soundwatch.contracts import AudioChunk, FeatureWindow, machine_key
from soundwatch.kafka import ensure_topics, make_admin, make_consumer, make_producer
from soundwatch.params import FeatureParams
from soundwatch.settings import Settings

REAL_MINI = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "real-mini"


def bench_audio(seconds: float, params: FeatureParams, data_dir: Path | None = None) -> tuple[np.ndarray, str]:
    """``[n_clips, 10 s]`` float32 audio totalling about ``seconds``: real-mini clips if present, else noise."""
    clip_len = 10 * params.sample_rate
    n_clips = max(1, round(seconds / 10))
    root = data_dir or REAL_MINI
    files = sorted(root.rglob("*.wav")) if root.is_dir() else []
    if files:
        clips = [read_audio(files[i % len(files)], params.sample_rate)[:clip_len] for i in range(n_clips)]
        clips = [np.pad(c, (0, clip_len - c.size)) for c in clips]
        return np.stack(clips).astype(np.float32), f"real-mini ({min(n_clips, len(files))} distinct clips)"
    rng = np.random.default_rng(0)
    return (0.1 * rng.standard_normal((n_clips, clip_len))).astype(np.float32), "synthetic noise"


def _librosa(audio: np.ndarray, p: FeatureParams) -> np.ndarray:
    import librosa  # deferred: loads librosa

    mel = librosa.feature.melspectrogram(
        y=audio,
        sr=p.sample_rate,
        n_fft=p.n_fft,
        hop_length=p.hop_length,
        n_mels=p.n_mels,
        fmin=p.fmin,
        fmax=p.fmax,
        power=p.power,
        center=True,
        pad_mode="constant",
        window="hann",
        htk=False,
        norm="slaney",
    )
    return librosa.power_to_db(mel, ref=1.0, amin=p.amin, top_db=None)


def _floor(audio: np.ndarray, p: FeatureParams, fft: str = "scipy") -> np.ndarray:
    """The bare minimum: float32 rfft of pre-framed audio (scipy's or ducc0's), ``|X|^2``, dense mel matmul."""
    frames = np.lib.stride_tricks.sliding_window_view(audio, p.n_fft, axis=-1)[..., :: p.hop_length, :]
    if fft == "ducc0":
        spec = ducc0.fft.r2c(frames, axes=(frames.ndim - 1,), nthreads=1)
    else:
        spec = scipy.fft.rfft(frames, axis=-1)
    return (spec.real**2 + spec.imag**2) @ mel_filterbank(p).T


def _cpu_seconds(fn: Any, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.process_time()
        fn()
        out.append(time.process_time() - t0)
    return out


def logmel_bench(
    seconds: float = 320.0, repeats: int = 5, params: FeatureParams | None = None, data_dir: Path | None = None
) -> dict[str, Any]:
    p = params or FeatureParams()
    audio, source = bench_audio(seconds, p, data_dir)
    audio_s = audio.size / p.sample_rate
    ours = log_mel(audio, params=p)  # warm-up (numba JIT, filterbank cache) and parity check
    ref = _librosa(audio, p)[..., : ours.shape[-1]]
    _floor(audio, p)
    _floor(audio, p, "ducc0")

    def librosa_per_clip() -> None:
        for clip in audio:
            _librosa(clip, p)

    runs = {
        "ours": lambda: log_mel(audio, params=p),
        "librosa": lambda: _librosa(audio, p),
        "librosa_per_clip": librosa_per_clip,
        "floor": lambda: _floor(audio, p),
        "floor_ducc0": lambda: _floor(audio, p, "ducc0"),
    }
    times: dict[str, list[float]] = {k: [] for k in runs}
    with threadpool_limits(limits=1):
        for _ in range(repeats):  # interleaved, so drifting machine load hits all alike
            for name, fn in runs.items():
                times[name] += _cpu_seconds(fn, 1)
    best = {k: min(v) for k, v in times.items()}
    return {
        "audio": source,
        "audio_seconds": round(audio_s, 1),
        "repeats": repeats,
        "ours_audio_s_per_cpu_s": round(audio_s / best["ours"], 1),
        "librosa_audio_s_per_cpu_s": round(audio_s / best["librosa"], 1),
        "floor_audio_s_per_cpu_s": round(audio_s / best["floor"], 1),
        "speedup_vs_librosa": round(best["librosa"] / best["ours"], 2),
        "ratio_to_floor": round(best["ours"] / best["floor"], 2),
        "floor_ducc0_audio_s_per_cpu_s": round(audio_s / best["floor_ducc0"], 1),
        "ratio_to_floor_ducc0": round(best["ours"] / best["floor_ducc0"], 2),
        "librosa_per_clip_audio_s_per_cpu_s": round(audio_s / best["librosa_per_clip"], 1),
        "speedup_vs_librosa_per_clip": round(best["librosa_per_clip"] / best["ours"], 2),
        "max_abs_db_vs_librosa": float(np.abs(ours - ref).max()),
        "cpu_s": {k: [round(x, 4) for x in v] for k, v in times.items()},
    }


def stream_bench(
    settings: Settings, audio_seconds: float = 480.0, machines: int = 4, timeout_s: float = 180.0
) -> dict[str, Any]:
    """Sustained rate of one Faust worker through the broker, on private topics.

    A backlog of ``audio_seconds`` (``machines`` machines, 1 s PCM16 chunks) is produced first, then one
    worker (a subprocess, like production) is started and the windows it publishes are read back.
    ``stream_realtime_factor`` = audio seconds the windows advance / wall seconds between the first and
    the last window (producer timestamps), so start-up and group join are not counted.
    """
    p = settings.features
    u = uuid.uuid4().hex[:8]
    names = {"audio_raw": f"bench{u}.audio", "features": f"bench{u}.features", "deadletter": f"bench{u}.dead"}
    topics = settings.kafka.topics.model_copy(update=names)
    s = settings.model_copy(update={"kafka": settings.kafka.model_copy(update={"topics": topics})})
    ensure_topics(s, list(names.values()))
    audio, _ = bench_audio(max(audio_seconds, 10.0 * machines), p)
    per_machine = audio[: audio.shape[0] // machines * machines].reshape(machines, -1)  # clips back to back
    pcm = np.clip(np.round(per_machine * 32768), -32768, 32767).astype(np.int16)
    chunk = p.sample_rate
    producer = make_producer(s)
    for i in range(pcm.shape[1] // chunk):
        for m in range(machines):
            c = AudioChunk(
                "bench", f"m{m:02d}", "bench", p.sample_rate, i, i * 1_000_000_000, pcm[m, i * chunk : (i + 1) * chunk]
            )
            producer.send(names["audio_raw"], key=machine_key("bench", f"m{m:02d}"), value=c.encode())
    producer.flush()
    producer.close()
    n_samples = (pcm.shape[1] // chunk) * chunk  # per machine
    expected = machines * n_windows(complete_frames(n_samples, p), p)
    env = dict(os.environ)
    env.update(
        {
            "SOUNDWATCH_KAFKA__BOOTSTRAP_SERVERS": s.kafka.bootstrap_servers,
            "SOUNDWATCH_KAFKA__TOPICS__AUDIO_RAW": names["audio_raw"],
            "SOUNDWATCH_KAFKA__TOPICS__FEATURES": names["features"],
            "SOUNDWATCH_KAFKA__TOPICS__DEADLETTER": names["deadletter"],
            "SOUNDWATCH_STREAM__APP_ID": f"bench-{u}",
            "SOUNDWATCH_STREAM__DATA_DIR": str(Path(settings.stream.data_dir) / f"bench-{u}"),
        }
    )
    log_file = tempfile.TemporaryFile()  # noqa: SIM115 - closed below; not a pipe: a chatty worker would block on a full one
    worker = subprocess.Popen(
        [sys.executable, "-m", "features.cli", "run", "--web-port", "0"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log_file,
    )
    stamps: list[int] = []
    consumer = make_consumer(s, names["features"], group_id=None)
    try:
        deadline = time.monotonic() + timeout_s
        while len(stamps) < expected and time.monotonic() < deadline and worker.poll() is None:
            for records in consumer.poll(timeout_ms=500).values():
                for rec in records:
                    FeatureWindow.decode(rec.value)
                    stamps.append(rec.timestamp)
    finally:
        consumer.close()
        worker.terminate()
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
        log_file.seek(0)
        err = log_file.read()
        log_file.close()
        _delete_topics(s, [*names.values(), f"bench-{u}-windower-state-changelog"])
        shutil.rmtree(Path(settings.stream.data_dir) / f"bench-{u}", ignore_errors=True)
    if len(stamps) < 2:
        tail = err.decode(errors="replace")[-800:]
        raise RuntimeError(
            f"the worker published {len(stamps)} of {expected} windows within {timeout_s:.0f} s:\n{tail}"
        )
    wall = (max(stamps) - min(stamps)) / 1000.0
    advanced = (len(stamps) - machines) * p.hop_seconds  # each machine's first window is the starting line
    return {
        "stream_realtime_factor": round(advanced / wall, 1) if wall > 0 else None,
        "stream_windows": len(stamps),
        "stream_windows_expected": expected,
        "stream_audio_seconds": round(machines * n_samples / p.sample_rate, 1),
        "stream_wall_s": round(wall, 2),
    }


def _delete_topics(settings: Settings, names: list[str]) -> None:
    """Best effort: the local broker keeps everything in memory."""
    try:
        admin = make_admin(settings)
    except Exception:  # noqa: BLE001 - cleanup must not hide the measurement
        return
    try:
        existing = set(admin.list_topics())
        admin.delete_topics([n for n in names if n in existing])
    except Exception:  # noqa: BLE001
        pass
    finally:
        admin.close()
