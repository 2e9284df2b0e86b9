"""Builds flaudit and its one extension, ``flaudit._C``, from csrc/.

CPU kernels always; CUDA kernels (``csrc/*.cu``) when nvcc is found at ``$CUDA_HOME`` (default
/usr/local/cuda) unless ``FLAUDIT_CUDA=0``; ``FLAUDIT_CUDA=1`` requires them.
Install with ``pip install --no-build-isolation -e .`` so the build uses the pinned torch.
"""

from __future__ import annotations

import os
from pathlib import Path

from setuptools import find_packages, setup

# torch.utils.cpp_extension fixes its CUDA_HOME at import time, from $CUDA_HOME or else from the
# nvcc on PATH; here that is a wrapper script in /usr/local/bin, which would make it look for the
# toolkit's headers and libraries under /usr/local. Point it at the toolkit before importing it.
if "CUDA_HOME" not in os.environ and Path("/usr/local/cuda/bin/nvcc").exists():
    os.environ["CUDA_HOME"] = "/usr/local/cuda"

from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402

ROOT = Path(__file__).parent
CSRC = ROOT / "csrc"
# The repository's top folders, installed as subpackages of the one ``flaudit`` package.
ROOMS = ("auditor", "core", "defenses", "integrations", "scenarios")


class BuildExt(BuildExtension):
    """BuildExtension that names CUDA objects ``foo.cu.o``, so csrc/foo.cpp and csrc/foo.cu
    (CPU and CUDA kernels of one op) can coexist: by default both compile to foo.o and ninja
    refuses ("multiple rules generate foo.o")."""

    def build_extensions(self):
        object_filenames = self.compiler.object_filenames

        def distinct_object_filenames(sources, *args, **kwargs):
            sources = list(sources)
            objects = object_filenames(sources, *args, **kwargs)
            return [
                os.path.splitext(o)[0] + ".cu" + os.path.splitext(o)[1] if str(s).endswith(".cu") else o
                for s, o in zip(sources, objects)
            ]

        self.compiler.object_filenames = distinct_object_filenames
        super().build_extensions()


def want_cuda() -> bool:
    flag = os.environ.get("FLAUDIT_CUDA", "").strip()
    cuda_home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    found = (Path(cuda_home) / "bin" / "nvcc").exists()
    if flag == "0":
        return False
    if flag == "1" and not found:
        raise SystemExit(f"FLAUDIT_CUDA=1 but nvcc was not found under CUDA_HOME={cuda_home}")
    if found:
        os.environ.setdefault("CUDA_HOME", cuda_home)
    return found


def extension():
    cpp = sorted(str(p.relative_to(ROOT)) for p in CSRC.glob("*.cpp"))
    cxx = ["-O3", "-std=c++20", "-fopenmp"]
    if want_cuda():
        cu = sorted(str(p.relative_to(ROOT)) for p in CSRC.glob("*.cu"))
        arch = os.environ.get("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        os.environ["TORCH_CUDA_ARCH_LIST"] = arch
        return CUDAExtension(
            "flaudit._C",
            cpp + cu,
            define_macros=[("FLAUDIT_WITH_CUDA", "1")],
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "--use_fast_math", "-std=c++20"]},
            extra_link_args=["-fopenmp"],
        )
    return CppExtension("flaudit._C", cpp, extra_compile_args=cxx, extra_link_args=["-fopenmp"])


setup(
    name="flaudit",
    version="0.1.0",
    description="Privacy defense audits for federated learning: attacks x defenses -> scorecard",
    python_requires=">=3.11",
    packages=["flaudit"] + [f"flaudit.{name}" for name in find_packages(include=[f"{room}*" for room in ROOMS])],
    package_dir={"flaudit": "flaudit", **{f"flaudit.{room}": room for room in ROOMS}},
    package_data={
        "flaudit.auditor.results": ["schemas/*.json"],
        "flaudit.auditor.running": ["default_audit.toml"],
        "flaudit.integrations.flower": ["schemas/*.json"],
    },
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExt.with_options(use_ninja=True)},
    # Every runtime import (tests/test_packaging.py checks); versions are pinned in constraints.txt.
    install_requires=[
        "cma",
        "cryptography",
        "jsonschema",
        "matplotlib",
        "numpy",
        "opacus",
        "pillow",
        "scikit-image",
        "scikit-learn",
        "scipy",
        "torch",
        "torchvision",
        "tqdm",
    ],
    extras_require={
        "ray": ["ray"],  # the ray executor
        "flower": ["flwr==1.42.0"],  # flaudit.integrations.flower's strategies, mods and grid
        "bench": ["breaching", "flwr==1.42.0"],  # peers benches/bench_peers.py times ours against; never imported by flaudit
    },
    entry_points={
        "console_scripts": ["flaudit=flaudit.auditor.cli:main"],
        "flaudit.scenario_kinds": ["recorded=flaudit.integrations.flower.replay:RECORDED"],  # needs no Flower
    },
)
