"""The environment manifest of an audit: what produced the numbers, so they can be reproduced
and compared (package versions, device, whether the compiled kernels were used, git commit,
config hash, seeds, time)."""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
import sys
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

PACKAGES = (
    "flaudit", "torch", "torchvision", "numpy", "scipy", "scikit-learn", "scikit-image", "opacus",
    "cryptography", "cma", "matplotlib", "jsonschema", "ray",
)
REPO = Path(__file__).resolve().parents[2]


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_state() -> dict[str, Any]:
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_info() -> dict[str, Any]:
    cuda = torch.cuda.is_available()
    return {
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "cuda_available": cuda,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [],
        "torch_cuda_version": torch.version.cuda,
    }


def extension_info() -> dict[str, bool]:
    from flaudit.core.native import extension_available, has_cuda_kernels

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # recorded here instead of warned
        return {"built": extension_available(), "cuda_kernels": has_cuda_kernels()}


def manifest(**run: Any) -> dict[str, Any]:
    """The environment, plus the run's own facts (``run``: config hash, seeds, executor, ...)."""
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": package_versions(),
        "device": device_info(),
        "extension": extension_info(),
        "git": git_state(),
        **run,
    }
