"""Loads the compiled ``torch.ops.flaudit`` kernels once; wrappers fall back to torch references.

The extension (``flaudit._C``, built by setup.py from csrc/) registers its ops with
``TORCH_LIBRARY(flaudit, ...)``; importing it is all it takes for ``torch.ops.flaudit.<name>``
to dispatch by device. Without it, every op wrapper uses its pure-torch reference and one
warning says so.
"""

from __future__ import annotations

import functools
import importlib
import warnings


@functools.lru_cache(maxsize=None)
def extension_available() -> bool:
    """True when the compiled kernels are loaded; warns once (per process) when they are not."""
    try:
        importlib.import_module("flaudit._C")
    except ImportError as exc:
        warnings.warn(
            f"flaudit's compiled kernels are not built ({exc}); using the slower pure-torch "
            "references. Build them with `pip install --no-build-isolation -e .`.",
            RuntimeWarning,
            stacklevel=2,
        )
        return False
    return True


def has_cuda_kernels() -> bool:
    """True when the extension was compiled with its CUDA kernels."""
    if not extension_available():
        return False
    return bool(importlib.import_module("flaudit._C").cuda_built())
