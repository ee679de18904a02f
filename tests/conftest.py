"""Suite-wide settings: one torch thread per test process (the suite runs two processes on two cores;
oversubscribed BLAS/OpenMP threads make small convolutions many times slower)."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)
