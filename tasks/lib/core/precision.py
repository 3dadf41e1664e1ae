"""CPU number formats: detect what this CPU computes fast, and apply the format a use asks for.

`params.yaml` `precision` names a format per use (encoding, generation, each training). `auto`
means bf16 when the CPU has bf16 units (avx512_bf16 or amx_bf16) and fp32 otherwise: the same
params file runs on a machine without them, just slower, never wrong. bf16 is autocast (weights
stay fp32, matmuls run in bf16), so a model is saved and fingerprinted exactly as in fp32. int8
is dynamic quantization of the linear layers (`torch.ao.quantization`), for encoders only.

`RAGLOOP_CPU_BF16=0` makes detection report no bf16 units (tests simulate such a CPU with it;
`=1` claims them).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import torch

PrecisionSetting = Literal["auto", "fp32", "bf16", "int8"]
FloatSetting = Literal["auto", "fp32", "bf16"]  # the settings of a use int8 does not serve
Precision = Literal["fp32", "bf16", "int8"]
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
CPU_BF16_ENV = "RAGLOOP_CPU_BF16"
CPUINFO = Path("/proc/cpuinfo")


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags the kernel reports (empty where /proc/cpuinfo is absent)."""
    try:
        for line in CPUINFO.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("flags"):
                return frozenset(line.partition(":")[2].split())
    except OSError:
        pass
    return frozenset()


def cpu_has_bf16() -> bool:
    """Whether bf16 matmuls run natively here (else torch emulates them, slower than fp32)."""
    forced = os.environ.get(CPU_BF16_ENV)
    if forced is not None:
        return forced.strip() not in ("", "0", "false", "no")
    return any(flag in cpu_flags() for flag in BF16_FLAGS)


def resolve_precision(setting: PrecisionSetting, use: str) -> Precision:
    """The format `use` runs in: `auto` picks bf16 where the CPU has it; an explicit bf16 on a
    CPU without bf16 units falls back to fp32 (with a line saying so) rather than crawl."""
    if setting == "auto":
        return "bf16" if cpu_has_bf16() else "fp32"
    if setting == "bf16" and not cpu_has_bf16():
        print(
            f"precision: {use} asks for bf16 but this CPU has no bf16 units "
            f"({' / '.join(BF16_FLAGS)}); running in fp32",
            file=sys.stderr,
        )
        return "fp32"
    return setting


def autocast(precision: Precision) -> contextlib.AbstractContextManager[None]:
    """bf16 autocast on the CPU for `bf16`; a no-op otherwise (int8 modules need none)."""
    if precision == "bf16":
        import torch  # here, not above: config imports this module, and most stages never run torch

        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def quantized_int8(module: torch.nn.Module) -> torch.nn.Module:
    """A copy of `module` with every Linear layer dynamically quantized to int8 (weights int8,
    activations quantized per batch); the original keeps its fp32 weights and fingerprint."""
    import torch  # see `autocast`

    return torch.ao.quantization.quantize_dynamic(
        copy.deepcopy(module), {torch.nn.Linear}, dtype=torch.qint8
    )
