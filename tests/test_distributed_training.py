"""Training on two processes (torchrun, gloo on the CPU) against one process.

The tests start the processes themselves: ``python -m torch.distributed.run --standalone``
(a rendezvous on a free localhost port) with 2 processes, each running the worker script or
``tessera train``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from _helpers import TINY_NETWORK
from napari_tessera import load_model, segment
from napari_tessera.io import read_model_info
from napari_tessera.synthetic import nuclei_2d
from napari_tessera.training.checkpoint import load_checkpoint

WORKER = Path(__file__).with_name("_ddp_worker.py")
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node"]
TIMEOUT = 240  # s; a hang (a rank left waiting in a collective) fails the test


# a rank left waiting in a collective gives up after this many seconds (an error, not a hang)
ENV = {**os.environ, "TESSERA_DIST_TIMEOUT": "60", "PYTHONFAULTHANDLER": "1"}


def _run(cmd, timeout: float = TIMEOUT, **kw):
    """Run ``cmd`` in its own process group; on a timeout the whole group (torchrun and
    its ranks) is killed, so no rank outlives the test."""
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
        start_new_session=True, **kw,
    )  # fmt: skip
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"timed out after {timeout} s:\n{err[-3000:]}") from None
    res = subprocess.CompletedProcess(cmd, proc.returncode, out, err)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def worker_run(out: Path, processes: int, *extra: str, timeout: float = TIMEOUT) -> list[dict]:
    out.mkdir()
    if processes == 1:
        _run([sys.executable, str(WORKER), str(out), *extra], timeout=timeout)
    else:
        _run([*TORCHRUN, str(processes), str(WORKER), str(out), *extra], timeout=timeout)
    runs = []
    for r in range(processes):
        info = json.loads((out / f"rank{r}.json").read_text())
        info["params"] = load_file(str(out / f"rank{r}.safetensors"))
        info["start"] = load_file(str(out / f"rank{r}.start.safetensors"))
        runs.append(info)
    return runs


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def update(run: dict) -> torch.Tensor:
    """The change of all the weights over the run, as one vector."""
    keys = sorted(run["params"])
    return torch.cat([(run["params"][k] - run["start"][k]).double().flatten() for k in keys])


def compare(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float, float]:
    """Cosine similarity, norm ratio and relative distance of update ``a`` to update ``b``."""
    cos = float(a @ b / (a.norm() * b.norm()))
    return cos, float(a.norm() / b.norm()), float((a - b).norm() / b.norm())


@pytest.mark.slow
def test_two_processes_equal_one_process_with_the_same_global_batch(tmp_path):
    # every global batch is two equal halves: each process then sees the statistics (BatchNorm,
    # loss) one process sees, and the runs must agree to float precision
    one = worker_run(tmp_path / "one", 1, "--duplicate-halves")[0]
    two = worker_run(tmp_path / "two", 2, "--duplicate-halves")
    assert max_diff(two[0]["params"], two[1]["params"]) == 0.0  # the ranks stay in step
    assert max_diff(two[0]["params"], one["params"]) < 1e-4  # measured: 2e-6
    # the runs really trained: the weights moved far more than the tolerance
    assert max_diff(one["params"], one["start"]) > 1e-3  # measured: 3e-3
    np.testing.assert_allclose(two[0]["losses"], one["losses"], rtol=1e-3)


@pytest.mark.slow
def test_processes_training_on_different_patches_equal_one_process(tmp_path):
    # per-sample normalisation, no Dice term, no class balance: each patch's gradient is its
    # own, so two processes, each on its half of the global batch, must update the weights as
    # one process does on the whole batch (with BatchNorm on the CPU they differ: per-process
    # statistics)
    one = worker_run(tmp_path / "one", 1, "--per-sample-norm")[0]
    two = worker_run(tmp_path / "two", 2, "--per-sample-norm")
    half = worker_run(tmp_path / "half", 1, "--per-sample-norm", "--batch", "2")[0]
    steps = len(one["seen"])
    assert steps == 12 and len(two[0]["seen"]) == len(two[1]["seen"]) == steps
    # rank 0 and rank 1 train on different patches that together make the 1-process batch
    assert all(a != b for a, b in zip(two[0]["seen"], two[1]["seen"]))
    np.testing.assert_allclose(
        np.add(two[0]["seen"], two[1]["seen"]), one["seen"], rtol=1e-12, atol=1e-6
    )
    # gradients are averaged: both ranks end with the same weights although their data differ
    assert max_diff(two[0]["params"], two[1]["params"]) == 0.0
    assert max_diff(two[0]["start"], one["start"]) == max_diff(half["start"], one["start"]) == 0
    # measured: cosine 1 - 1e-12, norm ratio 1 + 1e-8, distance 1e-6
    cos, ratio, dist = compare(update(two[0]), update(one))
    assert cos > 0.9999 and abs(ratio - 1) < 1e-3 and dist < 1e-3, (cos, ratio, dist)
    # control: one process with half the batch (what a rank would do alone) is far off
    # (measured: cosine 0.93, norm ratio 0.90, distance 0.36)
    cos, ratio, dist = compare(update(half), update(one))
    assert cos < 0.99 and dist > 0.1, (cos, ratio, dist)


@pytest.mark.parametrize("late_rank", [0, 1])
@pytest.mark.slow
def test_a_stop_request_right_after_the_agreement_waits_for_the_next_step(tmp_path, late_rank):
    # the request lands on one rank after the ranks agreed to go on: that rank must not leave
    # alone (the other would wait forever in the next collective); both stop one step later
    runs = worker_run(
        tmp_path / "late", 2, "--steps", "1000", "--late-stop", f"{late_rank}:5", timeout=120
    )
    assert [r["stopped"] for r in runs] == ["requested", "requested"]
    assert [r["steps"] for r in runs] == [6, 6]  # step 6 was agreed on, the stop comes after it
    assert max_diff(runs[0]["params"], runs[1]["params"]) == 0.0


# -- tessera train under torchrun -------------------------------------------------------------
@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("ddp_cli")
    s = nuclei_2d((128, 128), seed=5)
    np.save(d / "img.npy", s.image)
    np.save(d / "lab.npy", np.where(s.labels > 0, 2, 1).astype(np.uint8))
    return d, s.image


TINY = [*TINY_NETWORK, "--batch-size", "4"]
TINY += ["--seed", "0", "--device", "cpu", "--val-fraction", "0", "--axes", "YX"]


def train_cmd(d: Path, out: str, *extra: str) -> list[str]:
    return [*TORCHRUN, "2", "-m", "napari_tessera.cli", "train", str(d / "img.npy"),
            str(d / "lab.npy"), "-o", str(d / out), *TINY, *extra]  # fmt: skip


@pytest.mark.slow
def test_tessera_train_under_torchrun_trains_writes_once_and_resumes(files, tmp_path):
    d, image = files
    res = _run(train_cmd(d, "m.safetensors", "--steps", "40"))
    assert res.stderr.count("tessera: wrote") == 1  # rank 0 writes and reports; rank 1 is quiet
    model = load_model(d / "m.safetensors")
    prov = read_model_info(d / "m.safetensors")[1]["provenance"]
    assert prov["processes"] == 2 and prov["steps"] == 40
    labels = segment(model, image, device="cpu")
    assert labels.shape == image.shape
    ckpt = load_checkpoint(d / "m.ckpt.safetensors")
    losses = [h["loss"] for h in ckpt.history]
    assert len(losses) == 40 and np.mean(losses[-5:]) < 0.9 * np.mean(losses[:5])  # it learns
    _run(train_cmd(d, "m.safetensors", "--resume", str(d / "m.ckpt.safetensors"), "--steps", "50"))
    assert load_checkpoint(d / "m.ckpt.safetensors").step == 50


@pytest.mark.slow
def test_the_default_start_under_torchrun_trains_the_start_it_records(files):
    """``--from auto`` under torchrun: the ranks judge the built-in model, take one start
    (rank 0's) and train it; the model records the judgement and the start it took."""
    d, _ = files
    cmd = [c for c in train_cmd(d, "auto.safetensors", "--steps", "2") if c != "scratch"]
    cmd[cmd.index("--from")] = "--quiet"  # the default start, judged on every rank
    res = _run(cmd)
    assert res.returncode == 0, res.stderr[-2000:]
    prov = read_model_info(d / "auto.safetensors")[1]["provenance"]
    fit = prov["start_fit"]
    assert prov["processes"] == 2 and fit is not None and fit["objects_iou"] is not None
    assert prov["trained_from"] == ("fine-tuned" if fit["fits"] else "scratch")


@pytest.mark.slow
def test_a_batch_not_shared_evenly_is_refused(files):
    d, _ = files
    res = subprocess.run(
        train_cmd(d, "odd.safetensors", "--steps", "5", "--batch-size", "3"),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=ENV,
    )
    assert res.returncode != 0
    ours = [ln for ln in res.stderr.splitlines() if ln.startswith("tessera train: error:")]
    assert ours and all("must be a multiple of the number of processes (2)" in ln for ln in ours)
    assert not (d / "odd.safetensors").exists()


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return sorted(int(p) for p in path.read_text().split()) if path.exists() else []


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs /proc to find the ranks")
@pytest.mark.slow
def test_ctrl_c_on_one_process_stops_both_and_rank_0_saves(files):
    d, _ = files
    proc = subprocess.Popen(
        train_cmd(d, "stop.safetensors", "--steps", "1000000"),
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        env=ENV,  # a hang below dumps the ranks' stacks
    )
    err: list[bytes] = []
    reader = threading.Thread(
        target=lambda: err.extend(iter(lambda: proc.stderr.read1(), b"")), daemon=True
    )
    reader.start()
    ranks: list[int] = []
    try:
        deadline = time.monotonic() + TIMEOUT
        while b"loss=" not in b"".join(err):  # training has started
            assert proc.poll() is None and time.monotonic() < deadline, b"".join(err)[-2000:]
            time.sleep(0.2)
        ranks = _children(proc.pid)
        assert len(ranks) == 2
        os.kill(ranks[-1], signal.SIGINT)  # one of the two, whichever rank it is
        try:
            code = proc.wait(timeout=120)  # no hang: the other rank stops too
        except subprocess.TimeoutExpired:
            code = None
    finally:
        if proc.poll() is None:  # a hang: dump the ranks' stacks, then end them and torchrun
            for sig in (signal.SIGABRT, signal.SIGKILL):
                for pid in ranks:
                    try:
                        os.kill(pid, sig)
                    except ProcessLookupError:
                        pass
                time.sleep(2)
            proc.kill()
        reader.join(timeout=10)
    text = b"".join(err).decode(errors="replace")
    assert code is not None, "the ranks did not stop:\n" + text[-6000:]
    assert code == 0, text[-2000:]
    prov = read_model_info(d / "stop.safetensors")[1]["provenance"]
    assert prov["stopped"] == "requested" and 0 < prov["steps"] < 1000000


@pytest.mark.parametrize("text", ["abc", "0", "-5", "nan"])
def test_a_bad_collective_timeout_is_refused(monkeypatch, text):
    from napari_tessera.errors import InputError
    from napari_tessera.training import distributed as ddp

    monkeypatch.setenv("TESSERA_DIST_TIMEOUT", text)
    with pytest.raises(InputError, match="TESSERA_DIST_TIMEOUT must be a positive"):
        ddp.collective_timeout()
    monkeypatch.setenv("TESSERA_DIST_TIMEOUT", "90")
    assert ddp.collective_timeout().total_seconds() == 90
