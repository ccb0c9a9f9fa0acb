"""gradflow_lessons.export: the monitor's history as pandas, TensorBoard and plain dicts."""

import dataclasses
import math

import pytest
import torch
from torch import nn

from gradflow_lessons.export import COLUMNS, rows, scalars_by_step, to_dataframe, write_tensorboard
from gradflow_lessons.monitor import GradientMonitor


@pytest.fixture
def monitor():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(16, 4), torch.randn(16, 2)
    with GradientMonitor(model, optimizer, histogram_every=2) as mon:
        for _ in range(3):
            optimizer.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            mon.record()
            optimizer.step()
    return mon


def test_rows_hold_every_gradient_norm_of_the_history(monitor):
    norms = {(s, layer): v for s, layer, kind, stat, v in rows(monitor) if stat == "grad_norm"}
    assert norms == {(r.step, r.layer): r.grad_norm for r in monitor.history}


def test_rows_leave_out_statistics_that_were_not_computed(monitor):
    record = dataclasses.replace(monitor.history[0], update_ratio=None)  # no optimizer step yet
    assert "update_ratio" not in {stat for _, _, _, stat, _ in rows([record])}
    assert "update_ratio" in {stat for _, _, _, stat, _ in rows([monitor.history[0]])}


def test_rows_keep_nan_and_inf(monitor):
    record = monitor.history[0]
    record.grad_norm = math.inf
    assert (record.step, record.layer, "gradient", "grad_norm", math.inf) in rows([record])


def test_rows_refuse_something_that_is_not_a_history():
    with pytest.raises(ValueError, match="GradientMonitor or a list of its records"):
        rows({"grad_norm": 1.0})


def test_dataframe_is_long_form_and_pivots_to_the_norm_table(monitor):
    frame = to_dataframe(monitor)
    assert list(frame.columns) == list(COLUMNS)
    table = frame[frame.statistic == "grad_norm"].pivot(index="step", columns="layer", values="value")
    assert table.loc[monitor.history[0].step, monitor.history[0].layer] == monitor.history[0].grad_norm


def test_scalars_by_step_are_plain_dicts_with_grouped_tags(monitor):
    scalars = scalars_by_step(monitor, prefix="run")
    first = monitor.history[0]
    assert scalars[first.step][f"run/gradient/grad_norm/{first.layer}"] == first.grad_norm
    assert all(isinstance(v, float) for step in scalars.values() for v in step.values())


def test_tensorboard_event_file_reads_back_as_the_history(monitor, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    written = write_tensorboard(monitor, tmp_path)
    events = EventAccumulator(str(tmp_path), size_guidance={"scalars": 0, "histograms": 0}).Reload()
    for record in monitor.history:
        stored = {e.step: e.value for e in events.Scalars(f"gradflow/gradient/grad_norm/{record.layer}")}
        assert stored[record.step] == pytest.approx(record.grad_norm, rel=1e-6)
    histogram_tags = events.Tags()["histograms"]
    assert {f"gradflow/{h.kind}/histogram/{h.layer}" for h in monitor.histograms} == set(histogram_tags)
    h = monitor.histograms[0]
    stored = events.Histograms(f"gradflow/{h.kind}/histogram/{h.layer}")[0].histogram_value
    assert list(stored.bucket) == pytest.approx(h.counts.tolist())
    scalar_count = sum(len(events.Scalars(tag)) for tag in events.Tags()["scalars"])
    assert written == scalar_count + sum(len(events.Histograms(t)) for t in histogram_tags)
