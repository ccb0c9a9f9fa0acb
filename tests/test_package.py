"""The toolkit as a library: the wheel installs into a fresh virtual environment with the
base dependencies alone, and the tools work there without Jupyter."""

import os
import subprocess
import sys
import textwrap
import venv

import pytest

pytestmark = pytest.mark.slow

USE_THE_TOOLKIT = textwrap.dedent("""
    import importlib.util
    for name in ("jupyterlab", "ipykernel", "nbclient", "ipywidgets", "nbformat", "pandas"):
        assert importlib.util.find_spec(name) is None, f"{name} came with the base install"

    import torch
    import torch.nn.functional as F
    from torch import nn

    from gradflow_lessons import plots
    from gradflow_lessons.clipping import PercentileClipper, agc_, clip_by_norm_
    from gradflow_lessons.diagnose import diagnose
    from gradflow_lessons.export import scalars_by_step
    from gradflow_lessons.hessian import hessian_trace, top_eigenvalues
    from gradflow_lessons.monitor import GradientMonitor, count_hooks
    from gradflow_lessons.noise import gradient_noise_scale

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))
    x, y = torch.randn(64, 6), torch.randint(0, 3, (64,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with GradientMonitor(model, optimizer) as monitor:
        for _ in range(3):
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            monitor.record()
            clip_by_norm_(model.parameters(), 1.0)
            agc_(model.parameters())
            optimizer.step()
    assert count_hooks(model) == 0 and len(monitor.history) == 6
    assert scalars_by_step(monitor)
    plots.plot_gradient_flow(monitor.history)
    print("findings", [f.kind for f in diagnose(model, F.cross_entropy, x, y).findings])
    print("top", top_eigenvalues(model, F.cross_entropy, x, y).eigenvalues[0] > 0)
    print("trace", hessian_trace(model, F.cross_entropy, x, y).n_hvp > 0)
    print("b_simple", gradient_noise_scale(model, F.cross_entropy, x, y).trace_cov > 0)
    print("percentile", PercentileClipper is not None)
    print("toolkit ok")
""")


def test_wheel_installs_with_base_dependencies_and_the_toolkit_runs_without_jupyter(root, tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(wheels), str(root)], check=True)
    (wheel,) = wheels.glob("gradflow_lessons-*.whl")
    venv.create(tmp_path / "venv", with_pip=True)
    python = tmp_path / "venv" / "bin" / "python"
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "MPLBACKEND": "Agg"}
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", str(wheel)], check=True, env=env)
    result = subprocess.run([str(python), "-c", USE_THE_TOOLKIT], capture_output=True, text=True,
                            env=env, cwd=tmp_path)  # not the checkout: the wheel's files, not ours
    assert result.returncode == 0, result.stderr[-3000:]
    assert "toolkit ok" in result.stdout
