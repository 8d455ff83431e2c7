"""What a benchmark figure was measured on (the machines of this kind are not all the same CPU).

Benchmarks run as scripts (`python benchmarks/NAME.py`), so this folder is on their path:
`import machine`.
"""

import os
import platform


def cpu_description() -> str:
  """'AMD EPYC ..., 2 cores usable of 2, AVX2' — what the figures were measured on."""
  model, features = platform.processor() or platform.machine(), set()
  try:  # Linux; elsewhere the platform module's name
    with open("/proc/cpuinfo") as cpuinfo:  # local-only: the kernel's CPU description
      for line in cpuinfo:
        key, _, value = line.partition(":")
        if key.strip() == "model name":
          model = value.strip()
        elif key.strip() == "flags":
          features = set(value.split())
          break
  except OSError:
    pass
  usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  simd = [name for flag, name in (("avx512_bf16", "AVX-512 BF16"), ("amx_tile", "AMX"),
                                  ("avx512f", "AVX-512"), ("avx2", "AVX2")) if flag in features]
  return f"{model}, {usable} cores usable of {os.cpu_count()}" + (
      f", {' '.join(simd)}" if simd else "")
