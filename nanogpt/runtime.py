"""Where and how a command runs: the device, the number format, CPU threads, autocast and torch.compile.

train, sample, serve, eval and bench all start with `set_up` (device, dtype, TF32, threads, seed) and resolve
`compile` here, the same way.
"""

import importlib.util
import os
from contextlib import nullcontext

import torch

from nanogpt.errors import UserError

TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(name):
    """'auto' -> the best device here; otherwise check the named one exists."""
    if name == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device '{name}' asked for, but no CUDA GPU is available here: use --device=cpu")
    if name == "mps" and not torch.backends.mps.is_available():
        raise UserError("device 'mps' asked for, but Apple's MPS is not available here: use --device=cpu")
    return name


def device_type(device):
    """'cuda:1' -> 'cuda': the name torch.amp and the fused kernels know a device by."""
    return "cuda" if device.startswith("cuda") else device


def resolve_dtype(name, device_type, cpu_has_bf16=None):
    """'auto' -> bfloat16 where the GPU supports it, float16 on older GPUs, float32 elsewhere.
    'native' -> the same on GPUs; on a CPU, bfloat16 where it computes bfloat16 natively, else float32."""
    if name in ("auto", "native"):
        if device_type == "cuda":
            return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        # bfloat16 autocast reached the same loss but made a CPU training step 18x slower on an AVX2 CPU without
        # native bfloat16 (benchmarks/cpu_dtype.py), and 20% faster on one with AVX512-BF16; 'auto' keeps
        # nanoGPT's float32 on every CPU, so its runs train exactly as upstream's
        if name == "native" and device_type == "cpu":
            return "bfloat16" if (cpu_bf16_is_native() if cpu_has_bf16 is None else cpu_has_bf16) else "float32"
        return "float32"
    if name == "float16" and device_type == "cpu":
        raise UserError("float16 is not supported on the CPU: use --dtype=float32 or --dtype=bfloat16")
    return name


def cpu_bf16_is_native():
    """Whether this CPU has bfloat16 instructions (AVX512-BF16 or AMX), the ones PyTorch's CPU kernels use."""
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(check() for check in checks if check is not None)


def set_up(device, dtype, seed=None, threads=0):
    """The common start of every command: the device and number format resolved, TF32 on for CUDA, the CPU
    threads set and torch seeded. Returns (device, device_type, dtype)."""
    if threads < 0:
        raise UserError(f"threads must be 0 (auto) or more, got {threads}")
    device = resolve_device(device)
    kind = device_type(device)
    dtype = resolve_dtype(dtype, kind)
    prepare_device(kind)
    torch.set_num_threads(resolve_threads(threads))
    if seed is not None:
        torch.manual_seed(seed)
    return device, kind, dtype


def resolve_threads(threads, cores=None, load=None, current=None):
    """PyTorch's intra-op CPU threads. 0 (auto) keeps PyTorch's own choice (one per core, or OMP_NUM_THREADS) but
    never more than the idle cores (cores less the one-minute load average, rounded), and at least one. A thread
    that shares its core with another busy process makes every other thread wait for it at each operation: on a
    2-core machine with one other job running, two threads sampled the quick-start model 6x slower than one (17 s
    against 2.9 s), and with two other jobs 15-70x slower; on a quiet machine two threads made the quick-start
    model's training step 1.5x faster than one (benchmarks/threads.py)."""
    if threads:
        return threads
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if load is None:
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    current = torch.get_num_threads() if current is None else current
    return max(1, min(current, cores - int(load + 0.5)))


def resolve_compile(value, device_type):
    """Whether to torch.compile. 'auto' compiles on CUDA only where Triton, which compiles the kernels, can be
    imported (it is missing on Windows, among others); on CPU and MPS compiling rarely pays for small models."""
    if value != "auto":
        return value
    return device_type == "cuda" and importlib.util.find_spec("triton") is not None


def autocast(device_type, dtype):
    """A fresh context manager that runs the forward pass in dtype (float32: no autocast at all)."""
    if dtype == "float32":
        return nullcontext()
    return torch.amp.autocast(device_type=device_type, dtype=TORCH_DTYPES[dtype])


def prepare_device(device_type):
    if device_type == "cuda":
        # TF32 matmuls: float32 range with ~10-bit mantissa, several times faster on Ampere and later
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


# Dense peaks from NVIDIA's data sheets, matched against torch.cuda.get_device_name in order (the first name it
# contains wins, so variants come before their family): (name, 16-bit peak, float32 peak). The 16-bit peak is
# bf16's on tensor cores (V100 and T4 have no bf16: their float16). The float32 peak is TF32's on tensor cores,
# which prepare_device turns on, except on V100 and T4, which have no TF32: their plain float32 peak.
PEAK_FLOPS = (
    ("H200", 989e12, 495e12), ("H100 PCIe", 756e12, 378e12), ("H100 NVL", 835e12, 418e12),
    ("H100", 989e12, 495e12), ("GH200", 989e12, 495e12), ("A100", 312e12, 156e12), ("L40S", 362e12, 183e12),
    ("L4", 121e12, 60e12), ("A10G", 70e12, 35e12), ("A10", 125e12, 62.5e12), ("RTX 4090", 165e12, 82.6e12),
    ("RTX 3090", 71e12, 35.6e12), ("V100", 125e12, 15.7e12), ("T4", 65e12, 8.1e12),
)


def peak_flops(device, dtype):
    """(what the peak is of, peak flop/s) for the number format a run computes in on a GPU this table knows, for
    model flops utilization; None on a CPU, MPS or an unknown GPU, where no honest peak is known and MFU is not
    reported."""
    if not device.startswith("cuda"):
        return None
    name = torch.cuda.get_device_name(device)
    for key, half, single in PEAK_FLOPS:
        if key in name:
            if dtype != "float32":
                return f"{name} ({dtype})", half
            return f"{name} ({'float32' if key in ('V100', 'T4') else 'TF32'})", single
    return None
