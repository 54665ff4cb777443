"""Shared fixtures: a small synthetic dataset, and one real Ray instance per test session."""
from __future__ import annotations

import os

import pytest

SMALL_DATA = {"n_users": 150, "n_songs": 600, "n_artists": 60, "n_days": 20}


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="session")
def small(data_dir):
    """Config values for an in-process trainer on the small dataset."""
    return {**SMALL_DATA, "data_dir": data_dir}


@pytest.fixture(scope="session")
def small_sets(data_dir):
    """--set pairs for a run on the small dataset."""
    return [f"{k}={v}" for k, v in {**SMALL_DATA, "data_dir": data_dir}.items()]


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for every end-to-end test (about 10 s to start with the dashboard).

    2 CPUs, as on the CI machine; the dashboard stays on because Ray Train's placement-group
    cleaner needs its State API between Tune trials.
    """
    import ray

    os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "60")
    ray.init(num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1")
    yield ray
    ray.shutdown()


@pytest.fixture
def one_thread():
    """Single-threaded torch for the imaging tests: on 2 shared cores, two threads fighting
    another process are many times slower than one."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pytest_configure(config):
    # slow: seconds-long tests with child processes and signals, no Ray (tests/test_faults.py)
    config.addinivalue_line("markers", "slow: tests that start child processes and kill them (tens of seconds)")
