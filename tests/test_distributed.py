"""The toolkit under torch.distributed: 2 gloo processes on CPU against one process.

Each test runs this file as a script (``python tests/test_distributed.py CASE PORT OUT``),
which spawns two ranks; each rank saves what the toolkit reported to ``OUT/rank{r}.pt`` and
the test compares it with the single-process result on the whole batch. Under DDP and
FSDP2 the gradient of the mean loss over two half batches is the full batch's gradient, so
the numbers must agree.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import free_port
from torch import nn

import gradflow_lessons.clipping as clipping
from gradflow_lessons.diagnose import diagnose
from gradflow_lessons.monitor import GradientMonitor

distributed = pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
    reason="torch.distributed with the gloo backend is not available in this torch build",
)
pytestmark = [pytest.mark.slow, distributed]
TIMEOUT_S = 90
mse = nn.functional.mse_loss
COLLECTIVES: list[str] = []  # the worker counts torch.distributed calls here


def build(seed: int = 0, sick: bool = False) -> nn.Module:
    """A small MLP whose layers split unevenly over 2 ranks (7 and 3 rows: empty shards too)."""
    torch.manual_seed(seed)
    if sick:  # sigmoid x 8: the input-end gradient vanishes
        layers = [m for _ in range(8) for m in (nn.Linear(6, 6), nn.Sigmoid())]
        return nn.Sequential(nn.Linear(5, 6), *layers, nn.Linear(6, 3))
    return nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 1), nn.ReLU(), nn.Linear(1, 3))


def data(n: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 5, generator=g), torch.randn(n, 3, generator=g)


def train(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, keep_on: object = "all",
          poison: bool = False) -> tuple[list, list, dict]:
    """Two monitored SGD steps, then the ClipStats of a third backward (NaN in one entry when
    ``poison``: ``layer 0's weight[0, 0]``, which FSDP2 puts on rank 0)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    per_record = []
    with GradientMonitor(model, optimizer, keep_on=keep_on) as monitor:
        for _ in range(2):
            optimizer.zero_grad()
            mse(model(inputs), targets).backward()
            before = len(COLLECTIVES)
            last = monitor.record()
            per_record.append(len(COLLECTIVES) - before)
            optimizer.step()
    clips = {"collectives_per_record": per_record}
    for name, clip in (("norm", lambda p: clipping.clip_by_norm_(p, 0.05)),
                       ("value", lambda p: clipping.clip_by_value_(p, 0.01)),
                       ("monitor", lambda p: nonfinite_counts(model))):
        optimizer.zero_grad()
        mse(model(inputs), targets).backward()
        if poison:
            first = next(model.parameters()).grad
            shard = first.to_local() if hasattr(first, "to_local") else first
            dist = torch.distributed
            if shard.numel() and (not dist.is_initialized() or dist.get_rank() == 0):
                shard[0, 0] = float("nan")
        clips[name] = clip(model.parameters())
    return last, monitor.history, clips


def nonfinite_counts(model: nn.Module) -> list[int]:
    with GradientMonitor(model, activations=False) as monitor:
        return [r.nonfinite for r in monitor.record()]


def _counted(name: str, collective):
    def call(*args, **kwargs):
        COLLECTIVES.append(name)
        return collective(*args, **kwargs)
    return call


def _worker(rank: int, case: str, port: int, out: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    for collective in ("all_gather", "all_reduce"):  # count the toolkit's collectives
        setattr(dist, collective, _counted(collective, getattr(dist, collective)))
    try:
        kind, _, variant = case.partition("-")
        inputs, targets = data()
        half = slice(8 * rank, 8 * rank + 8)

        def wrap(model: nn.Module) -> nn.Module:
            if kind == "ddp":
                return nn.parallel.DistributedDataParallel(model)
            from torch.distributed.fsdp import fully_shard

            for module in model:
                if isinstance(module, nn.Linear):
                    fully_shard(module)
            return fully_shard(model)

        result: dict = {}
        if variant == "diagnose":  # every rank the whole batch: activation statistics are per rank
            for sick in (False, True):
                found = diagnose(wrap(build(sick=sick)), mse, inputs, targets)
                result[f"sick={sick}"] = [(f.kind, sorted(f.layers)) for f in found.findings]
        else:
            last, history, clips = train(wrap(build()), inputs[half], targets[half],
                                         keep_on=0 if variant == "rank0" else "all",
                                         poison=variant == "nan")
            result = {"last": last, "history": history, "clips": clips}
        torch.save(result, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


_RESULTS: dict[str, list[dict]] = {}


def run_ranks(case: str, tmp_path: Path) -> list[dict]:
    """Run ``case`` on 2 gloo ranks in a fresh interpreter (once per test session); the
    ranks' saved results."""
    if case not in _RESULTS:
        _RESULTS[case] = _spawn(case, tmp_path)
    return _RESULTS[case]


def _spawn(case: str, tmp_path: Path) -> list[dict]:
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, __file__, case, str(free_port()), str(tmp_path)],
                          capture_output=True, text=True, timeout=TIMEOUT_S, env=env, cwd=root)
    assert done.returncode == 0, done.stderr[-3000:]
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]


def name(layer: str) -> str:
    return layer.removeprefix("module.")  # DDP wraps the model as .module


def assert_same_records(got: list, want: list) -> None:
    assert [name(r.layer) for r in got] == [r.layer for r in want]
    for a, b in zip(got, want):
        assert a.step == b.step and a.numel == b.numel and a.nonfinite == b.nonfinite
        for field in ("grad_norm", "grad_mean_abs", "grad_max_abs", "zero_fraction", "update_ratio"):
            x, y = getattr(a, field), getattr(b, field)
            assert (x is None) == (y is None), field
            if x is not None:
                assert x == pytest.approx(y, rel=1e-5, abs=1e-9, nan_ok=True), (a.layer, field)


def reference(poison: bool = False) -> tuple[list, list, dict]:
    inputs, targets = data()
    return train(build(), inputs, targets, poison=poison)


@pytest.mark.parametrize("kind", ["ddp", "fsdp"])
def test_monitor_under_distributed_training_equals_one_process(kind, tmp_path):
    ranks = run_ranks(kind, tmp_path)
    last, history, _ = reference()
    for rank in ranks:  # every rank keeps the same, whole-gradient history
        assert_same_records(rank["last"], last)
        assert_same_records(rank["history"], history)


@pytest.mark.parametrize(("kind", "count"), [("ddp", 0), ("fsdp", 1)])
def test_a_record_costs_one_collective_under_fsdp_and_none_under_ddp(kind, count, tmp_path):
    for rank in run_ranks(kind, tmp_path):
        assert rank["clips"]["collectives_per_record"] == [count, count]
    assert reference()[2]["collectives_per_record"] == [0, 0]


def test_fsdp_history_is_kept_on_rank_0_only_when_asked(tmp_path):
    ranks = run_ranks("fsdp-rank0", tmp_path)
    last, history, _ = reference()
    assert_same_records(ranks[0]["history"], history)
    assert ranks[1]["history"] == []
    assert_same_records(ranks[1]["last"], last)  # record() still returns the step everywhere


@pytest.mark.parametrize("kind", ["ddp", "fsdp"])
def test_clip_stats_under_distributed_training_equal_one_process(kind, tmp_path):
    ranks = run_ranks(kind, tmp_path)
    _, _, clips = reference()
    for rank in ranks:
        for method, want in clips.items():
            if method in ("collectives_per_record", "monitor"):
                continue
            got = rank["clips"][method]
            assert got.clipped == want.clipped and got.nonfinite == want.nonfinite
            for field in ("norm_before", "norm_after", "fraction_clipped", "cosine"):
                assert getattr(got, field) == pytest.approx(getattr(want, field), rel=1e-5), (method, field)


def test_fsdp_counts_a_nan_on_one_shard_on_every_rank(tmp_path):
    ranks = run_ranks("fsdp-nan", tmp_path)
    _, _, clips = reference(poison=True)
    assert clips["norm"].nonfinite == 1 and clips["monitor"] == [1, 0, 0]
    for rank in ranks:
        assert rank["clips"]["norm"].nonfinite == 1
        assert rank["clips"]["value"].nonfinite == 1
        assert rank["clips"]["monitor"] == [1, 0, 0]  # GradientMonitor's count, layer by layer


@pytest.mark.parametrize("kind", ["ddp", "fsdp"])
def test_diagnose_under_distributed_training_finds_what_one_process_finds(kind, tmp_path):
    ranks = run_ranks(f"{kind}-diagnose", tmp_path)
    inputs, targets = data()
    for sick in (False, True):
        want = [(f.kind, sorted(f.layers)) for f in diagnose(build(sick=sick), mse, inputs, targets).findings]
        assert want or not sick  # the sick model is found by one process
        for rank in ranks:
            assert [(k, sorted(name(n) for n in layers)) for k, layers in rank[f"sick={sick}"]] == want


def test_keep_on_rejects_what_is_not_a_rank():
    with pytest.raises(ValueError, match="'all'"):
        GradientMonitor(build(), keep_on="rank0")


if __name__ == "__main__":
    torch.multiprocessing.spawn(_worker, args=(sys.argv[1], int(sys.argv[2]), sys.argv[3]), nprocs=2)
