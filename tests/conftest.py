"""Shared fixtures: small real data (scikit-learn digits) and one tiny trained bundle."""
from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest

from latentbeam.demo import digits_table, write_digits_parquet
from tiny import tiny_config


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory) -> str:
    """Directory with the 1797 digits rows as 2 Parquet files (id, label, pixel_00..63)."""
    d = str(tmp_path_factory.mktemp("digits"))
    write_digits_parquet(d, files=2)
    return d


@pytest.fixture(scope="session")
def digits_glob(digits_dir) -> str:
    return os.path.join(digits_dir, "*.parquet")


@pytest.fixture(scope="session")
def digits_matrix() -> np.ndarray:
    t = digits_table()
    return np.stack([t.column(f"pixel_{i:02d}").to_numpy() for i in range(64)], axis=1)


@pytest.fixture(scope="session")
def tiny_bundle_dir(tmp_path_factory, digits_glob) -> str:
    """A bundle trained once per session on the digits (latent_dim 2)."""
    from latentbeam.model import train

    out = str(tmp_path_factory.mktemp("bundle") / "tiny")
    train(tiny_config(digits_glob), out)
    return out


@pytest.fixture(scope="session")
def digit_images_glob(tmp_path_factory) -> str:
    """The digits as 2 Parquet files with an 8x8 `image` column (id, label, image)."""
    d = str(tmp_path_factory.mktemp("digit_images"))
    write_digits_parquet(d, files=2, images=True)
    return os.path.join(d, "*.parquet")


@pytest.fixture(scope="session")
def tiny_image_bundle_dir(tmp_path_factory, digit_images_glob) -> str:
    """A bundle trained once per session on the 8x8 `image` feature (latent_dim 2)."""
    from latentbeam.model import train

    out = str(tmp_path_factory.mktemp("image_bundle") / "tiny")
    train(tiny_config(digit_images_glob), out)
    return out


@pytest.fixture(scope="session")
def tiny_bundle(tiny_bundle_dir):
    from latentbeam.model import load_bundle

    return load_bundle(tiny_bundle_dir)


@pytest.fixture(scope="session")
def dask_cluster(tmp_path_factory):
    """A real Dask cluster on 127.0.0.1: a scheduler and two single-thread worker processes.

    Started with the `dask` command of this virtualenv, so the workers import the same
    (editable) latentbeam. Yields the scheduler address; stopped when the test run ends.
    """
    import signal
    import socket
    import subprocess
    import sys

    from distributed import Client

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    dask_cli = os.path.join(os.path.dirname(sys.executable), "dask")
    logs = tmp_path_factory.mktemp("dask")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    procs = []

    def start(name, *args):
        log_file = open(logs / f"{name}.log", "wb")
        procs.append(subprocess.Popen([dask_cli, *args], stdout=log_file,
                                      stderr=subprocess.STDOUT, env=env,
                                      start_new_session=True))

    try:
        start("scheduler", "scheduler", "--host", "127.0.0.1", "--port", str(port),
              "--no-dashboard")
        start("workers", "worker", address, "--nworkers", "2", "--nthreads", "1",
              "--no-dashboard", "--host", "127.0.0.1", "--local-directory", str(logs))
        with Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=90)
        yield address
    finally:
        for proc in reversed(procs):  # workers first; each owns its process group
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=30)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()
