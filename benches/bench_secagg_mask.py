"""secagg_mask: one client's masking of a ResNet-18-sized update (11.2M float32 values) with 8
pairwise masks and its self-mask, against this package's own reference (the same ChaCha20
streams by OpenSSL, numpy arithmetic), in the same run; and the raw ChaCha20 keystream of the op
against OpenSSL's. benches/conftest.py prints "reference / kernel" per group; each benchmark
records its keystream throughput (GB/s of mask words produced) in extra_info. Flower's SecAgg+
masking, imported from flwr, is compared in benches/bench_peers.py.

    .venv/bin/python -m pytest benches/bench_secagg_mask.py
"""

from __future__ import annotations

import pytest
import torch

from flaudit.defenses.secagg import FixedPoint, chacha20, chacha20_reference, mask_update, secagg_mask_reference
from flaudit.defenses.secagg.masking import seeds_tensor
from flaudit.core import native

N_VALUES = 11_200_000  # ResNet-18
N_MASKS = 9  # 8 neighbours (SecAgg+ with k = 8) and the self-mask
CLIP, BITS, WEIGHT = 1.0, 16, 50
ROUNDS = {"cpu": 5, "cuda": 30}
# Keystream generation on one core each (benches run one torch thread), but the kernel's SIMD
# width and OpenSSL's differ in how they suffer from a neighbour sharing the core.
TOLERANCE = 0.5


@pytest.fixture(scope="module")
def client():
    g = torch.Generator().manual_seed(0)
    update = torch.randn(N_VALUES, generator=g) * 0.01
    seeds = [bytes(torch.randint(0, 256, (32,), generator=g, dtype=torch.uint8).tolist()) for _ in range(N_MASKS)]
    signs = [1, -1] * (N_MASKS // 2) + [1] * (N_MASKS % 2)
    return update, seeds, signs


def kernel(update, seeds, signs):
    return mask_update(update, seeds, signs, clip_range=CLIP, quant_bits=BITS, weight=WEIGHT)


def openssl_reference(update, seeds, signs):
    return secagg_mask_reference(update, seeds_tensor(seeds), signs, CLIP, FixedPoint(CLIP, BITS).scale(WEIGHT))


def _run(benchmark, device, label, role, fn, args):
    benchmark.group = f"secagg_mask {device} N={N_VALUES} masks={N_MASKS}"
    benchmark.extra_info.update(role=role, label=label, tolerance=TOLERANCE)
    if device == "cuda":
        def target():
            fn(*args)
            torch.cuda.synchronize()
    else:
        def target():
            fn(*args)
    benchmark.pedantic(target, rounds=ROUNDS[device], warmup_rounds=1, iterations=1)
    keystream_bytes = 4 * N_VALUES * N_MASKS
    benchmark.extra_info["keystream_GBps"] = keystream_bytes / benchmark.stats.stats.median / 1e9


CPU_CASES = [("kernel", "candidate", kernel), ("openssl_numpy", "reference", openssl_reference)]


@pytest.mark.quick
@pytest.mark.parametrize("label,role,fn", CPU_CASES, ids=[c[0] for c in CPU_CASES])
def test_secagg_mask_cpu(benchmark, client, label, role, fn):
    if label == "kernel" and not native.extension_available():
        pytest.skip("flaudit._C not built")
    _run(benchmark, "cpu", label, role, fn, client)


def _clone(update, seeds, signs):
    return update.clone()


CUDA_CASES = [("kernel", "candidate", kernel), ("clone", "floor", _clone)]


@pytest.mark.parametrize("label,role,fn", CUDA_CASES, ids=[c[0] for c in CUDA_CASES])
def test_secagg_mask_cuda(benchmark, client, label, role, fn):
    if not (torch.cuda.is_available() and native.has_cuda_kernels()):
        pytest.skip("needs a CUDA device and flaudit._C built with its CUDA kernels")
    update, seeds, signs = client
    _run(benchmark, "cuda", label, role, fn, (update.cuda(), seeds, signs))


STREAM_WORDS = N_VALUES * N_MASKS  # the same keystream volume, as one raw stream


def _stream(fn):
    key, nonce = torch.arange(32, dtype=torch.uint8), torch.zeros(12, dtype=torch.uint8)
    return lambda: fn(key, nonce, 0, STREAM_WORDS)


STREAM_CASES = [("chacha20_op", "candidate", chacha20), ("openssl", "reference", chacha20_reference)]


@pytest.mark.parametrize("label,role,fn", STREAM_CASES, ids=[c[0] for c in STREAM_CASES])
def test_chacha20_keystream_cpu(benchmark, label, role, fn):
    """The raw keystream alone: the op (all cores) against OpenSSL's ChaCha20 (one core)."""
    if label == "chacha20_op" and not native.extension_available():
        pytest.skip("flaudit._C not built")
    benchmark.group = f"chacha20 keystream cpu words={STREAM_WORDS}"
    benchmark.extra_info.update(role=role, label=label, tolerance=TOLERANCE)
    benchmark.pedantic(_stream(fn), rounds=ROUNDS["cpu"], warmup_rounds=1, iterations=1)
    benchmark.extra_info["keystream_GBps"] = 4 * STREAM_WORDS / benchmark.stats.stats.median / 1e9
