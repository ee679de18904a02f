"""Suite-wide settings: one torch thread per test process (the suite runs two processes on two cores;
oversubscribed BLAS/OpenMP threads make small convolutions many times slower)."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)

import pytest  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _volume_cache_in_a_temp_folder(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The default volume cache (the user's cache folder) is redirected to a session temp folder, so tests
    never write to the home directory."""
    os.environ["MEDSUITE_CACHE_DIR"] = str(tmp_path_factory.mktemp("medsuite-cache"))


@pytest.fixture(scope="session", autouse=True)
def _error_logs_in_a_temp_folder(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The CLI's error logs (the user's log folder) go to a session temp folder too."""
    os.environ["MEDSUITE_LOG_DIR"] = str(tmp_path_factory.mktemp("medsuite-logs"))


@pytest.fixture(scope="session", autouse=True)
def _phi_key_in_a_temp_folder(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The pseudonymisation key (`medsuite.io.phi`, default: the user's config folder) is a session temp file,
    shared by the tests and the commands they start."""
    os.environ["MEDSUITE_PHI_KEY"] = str(tmp_path_factory.mktemp("medsuite-phi") / "phi.key")
