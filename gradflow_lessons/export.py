"""Take a ``GradientMonitor``'s history to the tools people already log with.

    frame = to_dataframe(monitor)              # pandas, long form: step, layer, kind, statistic, value
    write_tensorboard(monitor, "runs/exp1")    # or an open SummaryWriter
    for step, scalars in scalars_by_step(monitor).items():
        wandb.log(scalars, step=step)          # any logger that takes a dict: W&B, MLflow, Lightning

Nothing here is a dependency of the toolkit: pandas and TensorBoard are imported only when
their function is called (``pip install "gradflow-lessons[export]"``), and the dict form
needs neither, so a Weights & Biases or Lightning user adds no package to their run.

Every statistic a record holds becomes one row (``None``, a statistic not computed on that
step, is left out; NaN and inf are kept: they are what a diagnosis looks for). Tags are
``{prefix}/{kind}/{statistic}/{layer}``, so TensorBoard groups every layer of one statistic
under one heading, and ``write_tensorboard`` also writes a custom-scalars layout that draws
them as one chart per statistic (not one chart per layer).
"""

from __future__ import annotations

from pathlib import Path

import torch

# The statistics of each record type that are exported, in this order.
GRADIENT_STATISTICS = ("grad_norm", "grad_mean_abs", "grad_max_abs", "zero_fraction", "nonfinite",
                       "update_ratio")
ACTIVATION_STATISTICS = ("mean", "std", "dead_fraction", "saturated_fraction")
COLUMNS = ("step", "layer", "kind", "statistic", "value")


def _sources(source: object) -> tuple[list, list, list]:
    """(gradient records, activation records, histogram records) of a monitor or a list."""
    if all(hasattr(source, name) for name in ("history", "activations", "histograms")):
        return list(source.history), list(source.activations), list(source.histograms)
    if isinstance(source, (list, tuple)):
        gradients = [r for r in source if hasattr(r, "grad_norm")]
        activations = [r for r in source if hasattr(r, "dead_fraction")]
        histograms = [r for r in source if hasattr(r, "counts")]
        if len(gradients) + len(activations) + len(histograms) != len(source):
            raise ValueError("expected GradientRecord, ActivationRecord or HistogramRecord items "
                             "(monitor.history, monitor.activations, monitor.histograms)")
        return gradients, activations, histograms
    raise ValueError(f"expected a GradientMonitor or a list of its records, got {type(source).__name__}; "
                     "pass the monitor itself, or monitor.history")


def rows(source: object) -> list[tuple[int, str, str, str, float]]:
    """The history in long form: ``(step, layer, kind, statistic, value)`` tuples, where
    ``kind`` is ``"gradient"`` or ``"activation"``. Steps ascending, layers in model order.

    Args:
        source: a ``GradientMonitor``, or a list of its records (``monitor.history``).
    """
    gradients, activations, _ = _sources(source)
    out = []
    for kind, records, statistics in (("gradient", gradients, GRADIENT_STATISTICS),
                                      ("activation", activations, ACTIVATION_STATISTICS)):
        for record in records:
            for statistic in statistics:
                value = getattr(record, statistic, None)
                if value is not None:
                    out.append((record.step, record.layer, kind, statistic, float(value)))
    return sorted(out, key=lambda row: row[0])  # stable: model order kept within a step


def to_dataframe(source: object):
    """The history as a pandas ``DataFrame`` in long form, columns ``COLUMNS``.

    Pivot it for a table: ``frame[frame.statistic == "grad_norm"].pivot(index="step",
    columns="layer", values="value")``.

    Raises:
        ImportError: pandas is not installed (the message says how to install it).
    """
    try:
        import pandas as pd
    except ImportError:
        raise ImportError('to_dataframe needs pandas: pip install pandas (or "gradflow-lessons[export]")'
                          ) from None
    return pd.DataFrame(rows(source), columns=list(COLUMNS))


def scalars_by_step(source: object, prefix: str = "gradflow") -> dict[int, dict[str, float]]:
    """``{step: {tag: value}}`` with tags ``{prefix}/{kind}/{statistic}/{layer}``: one plain
    dict per step for ``wandb.log(scalars, step=step)``, ``mlflow.log_metrics`` or
    Lightning's ``self.log_dict``."""
    out: dict[int, dict[str, float]] = {}
    for step, layer, kind, statistic, value in rows(source):
        out.setdefault(step, {})[f"{prefix}/{kind}/{statistic}/{layer}"] = value
    return out


def _custom_scalar_layout(prefix: str) -> dict:
    """One TensorBoard chart per statistic, every layer a line in it."""
    return {
        f"{prefix} {kind}s": {
            statistic: ["Multiline", [rf"{prefix}/{kind}/{statistic}/.*"]] for statistic in statistics
        }
        for kind, statistics in (("gradient", GRADIENT_STATISTICS), ("activation", ACTIVATION_STATISTICS))
    }


def write_tensorboard(source: object, writer: object, prefix: str = "gradflow") -> int:
    """Write the history to TensorBoard: every statistic as a scalar, every stored histogram
    as a histogram, and a layout that draws one chart per statistic.

    Args:
        source: a ``GradientMonitor`` (histograms come only with a monitor, or with a list
            of ``HistogramRecord``), or a list of its records.
        writer: a ``torch.utils.tensorboard.SummaryWriter``, or a folder to create one in
            (it is then flushed and closed).
        prefix: the first part of every tag.

    Returns:
        The number of values written (scalars and histograms).

    Raises:
        ImportError: TensorBoard is not installed (the message says how to install it).
    """
    owned = isinstance(writer, (str, Path))
    if owned:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ImportError('write_tensorboard needs TensorBoard: pip install tensorboard '
                              '(or "gradflow-lessons[export]")') from None
        writer = SummaryWriter(log_dir=str(writer))
    written = 0
    try:
        writer.add_custom_scalars(_custom_scalar_layout(prefix))
        for step, scalars in scalars_by_step(source, prefix).items():
            for tag, value in scalars.items():
                writer.add_scalar(tag, value, global_step=step)
                written += 1
        for record in _sources(source)[2]:
            edges = record.edges.to(torch.float64)
            counts = record.counts.to(torch.float64)
            centres = (edges[1:] + edges[:-1]) / 2
            if counts.sum() == 0:
                continue  # TensorBoard refuses an empty histogram
            writer.add_histogram_raw(
                f"{prefix}/{record.kind}/histogram/{record.layer}",
                min=float(edges[0]), max=float(edges[-1]), num=int(counts.sum()),
                sum=float((centres * counts).sum()), sum_squares=float((centres**2 * counts).sum()),
                bucket_limits=edges[1:].tolist(), bucket_counts=counts.tolist(), global_step=record.step,
            )
            written += 1
    finally:
        if owned:
            writer.close()
    return written

