"""GPU detection that asks the driver instead of guessing."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass


@dataclass(frozen=True)
class GpuInfo:
    """The NVIDIA GPUs that ``nvidia-smi -L`` lists; empty when it is missing or fails."""

    names: tuple[str, ...]
    detail: str

    @property
    def present(self) -> bool:
        return bool(self.names)


def detect_nvidia_gpus() -> GpuInfo:
    """List the NVIDIA GPUs the driver reports."""
    if shutil.which("nvidia-smi") is None:
        return GpuInfo(names=(), detail="nvidia-smi not found, so no NVIDIA driver")

    try:
        completed = subprocess.run(
            ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return GpuInfo(names=(), detail=f"nvidia-smi failed: {error}")

    if completed.returncode != 0:
        return GpuInfo(names=(), detail=f"nvidia-smi exited with {completed.returncode}: {completed.stderr.strip()}")
    names = tuple(line.strip() for line in completed.stdout.splitlines() if line.startswith("GPU "))
    return GpuInfo(names=names, detail=f"{len(names)} NVIDIA GPU(s)")


def llama_cpp_supports_gpu() -> bool:
    """Return whether the installed llama-cpp-python was built with a GPU backend (CUDA, Metal, ...)."""
    try:
        import llama_cpp
    except ImportError:
        return False
    return bool(llama_cpp.llama_supports_gpu_offload())
