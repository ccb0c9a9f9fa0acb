"""Reproducibility and the machine a lesson runs on.

Every lesson starts with ``seed_everything(0)`` and puts its tensors on
``default_device()``: the CPU on a laptop, the GPU when there is one, with no change to
the notebook.
"""

from __future__ import annotations

import os
import platform
import random
from dataclasses import dataclass

import numpy as np
import torch


def seed_everything(seed: int = 0) -> torch.Generator:
    """Seed Python, NumPy and torch (CPU and CUDA) so a lesson runs the same every time.

    Args:
        seed: the seed.

    Returns:
        A ``torch.Generator`` seeded with ``seed``, for code that wants its own stream.
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    return torch.Generator().manual_seed(seed)


def default_device() -> torch.device:
    """The GPU when one is present, otherwise the CPU (the course never needs a GPU)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass(frozen=True)
class EnvironmentReport:
    """What a learner's machine offers the course (lesson 00 prints it)."""

    python: str
    torch: str
    numpy: str
    device: str
    cpu_threads: int
    cpu_count: int
    platform: str

    def rows(self) -> list[tuple[str, str]]:
        return [
            ("Python", self.python),
            ("PyTorch", self.torch),
            ("NumPy", self.numpy),
            ("device used by the lessons", self.device),
            ("torch CPU threads", str(self.cpu_threads)),
            ("CPU cores visible", str(self.cpu_count)),
            ("platform", self.platform),
        ]


def environment_report() -> EnvironmentReport:
    """Versions, device and thread count of this machine."""
    device = default_device()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    return EnvironmentReport(
        python=platform.python_version(),
        torch=torch.__version__,
        numpy=np.__version__,
        device=f"{device.type} ({name})",
        cpu_threads=torch.get_num_threads(),
        cpu_count=os.cpu_count() or 1,
        platform=f"{platform.system()} {platform.machine()}",
    )
