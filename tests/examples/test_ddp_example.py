"""examples/ddp_train.py runs under torchrun with two CPU processes."""

import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed as dist

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_processes():
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        f"--master_port={free_port()}",
        "-m",
        "examples.ddp_train",
        "--epochs",
        "1",
        "--method",
        "neumann-2",
    ]
    out = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "epoch 1:" in out.stdout and "on 2 processes" in out.stdout
    accuracy = float(out.stdout.split("test accuracy ")[1].split("%")[0])
    assert accuracy > 50.0
