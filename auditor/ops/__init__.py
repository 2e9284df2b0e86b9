"""Compiled kernels of the auditor (``torch.ops.flaudit.*``) behind plain Python functions.

Each op has a wrapper that dispatches to the compiled kernel (csrc/) when the extension is
built, and a pure-torch ``*_reference`` next to it: the fallback when it is not, and the oracle
of the parity tests.
"""

from flaudit.auditor.ops.bin_solve import bin_solve, bin_solve_reference

__all__ = ["bin_solve", "bin_solve_reference"]
