"""Execute a notebook cell by cell on a fresh kernel, surviving timeouts and kernel crashes.

Every code cell runs even when an earlier one failed. A cell that passes the
cell time limit is interrupted. A kernel that ignores the interrupt or dies is
replaced, and the cells that succeeded before run again on the new kernel, with
their outputs discarded, so that later cells find the state they expect.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from queue import Empty
from typing import Literal

import zmq
from jupyter_client.kernelspec import KernelSpec, KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from jupyter_core.utils import ensure_async, run_sync
from nbclient import NotebookClient
from nbclient.exceptions import CellTimeoutError, DeadKernelError
from nbformat import NotebookNode

logger = logging.getLogger(__name__)

# nbclient logs every timeout and crash at ERROR level. The runner reports
# those itself, with the notebook and cell, so nbclient's copies are muted.
_nbclient_logger = logging.getLogger("lab_support.grading.nbclient")
_nbclient_logger.setLevel(logging.CRITICAL)

KERNEL_NAME = "python3"
# Time an interrupted kernel gets to become idle before it is replaced, in seconds.
INTERRUPT_GRACE_S = 5.0

CellStatus = Literal["ok", "error", "timed out", "kernel died", "not run"]


@dataclass(frozen=True)
class CellRun:
    """The outcome of one code cell; ``ename``/``evalue`` come from the error output."""

    index: int
    status: CellStatus
    ename: str = ""
    evalue: str = ""
    detail: str = ""


class CurrentPythonKernelSpecs(KernelSpecManager):
    """Kernel specs where ``python3`` is always ipykernel on the interpreter running the grader.

    A ``python3`` spec in the user's Jupyter folders could point at another
    Python that lacks lab_support, so it is ignored here.
    """

    def get_kernel_spec(self, kernel_name: str) -> KernelSpec:
        if kernel_name != KERNEL_NAME:
            return super().get_kernel_spec(kernel_name)
        from ipykernel.kernelspec import get_kernel_dict

        return self.kernel_spec_class(resource_dir="", name=KERNEL_NAME, **get_kernel_dict())


class NotebookRunner:
    """Run the code cells of ``nb`` in place; cells in ``skip`` are left alone."""

    def __init__(
        self,
        nb: NotebookNode,
        cwd: Path,
        *,
        cell_timeout_s: float,
        notebook_timeout_s: float,
        env: dict[str, str] | None = None,
        skip: set[int] | frozenset[int] = frozenset(),
        startup_timeout_s: float = 60.0,
        label: str = "",
    ) -> None:
        self.nb = nb
        self.cwd = cwd
        self.cell_timeout_s = cell_timeout_s
        self.notebook_timeout_s = notebook_timeout_s
        self.env = dict(os.environ if env is None else env)
        self.skip = skip
        self.label = label or str(cwd)
        self.client = NotebookClient(
            nb,
            kernel_name=KERNEL_NAME,
            allow_errors=True,
            interrupt_on_timeout=False,
            record_timing=False,
            startup_timeout=math.ceil(startup_timeout_s),
            log=_nbclient_logger,
        )
        self.runs: dict[int, CellRun] = {}

    def run(self) -> dict[int, CellRun]:
        """Execute the notebook and return the outcome of each executed or unrun code cell by index."""
        return run_sync(self._run)()

    async def _run(self) -> dict[int, CellRun]:
        deadline = time.monotonic() + self.notebook_timeout_s
        await self._start_kernel()
        try:
            for index, cell in enumerate(self.nb.cells):
                if cell.cell_type != "code" or index in self.skip or not cell.source.strip():
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self.runs[index] = CellRun(
                        index,
                        "not run",
                        detail=f"the notebook time limit of {self.notebook_timeout_s:g} s "
                        f"was reached before cell {cell.get('id', f'#{index}')!r} ran",
                    )
                    continue

                run = await self._execute(index, cell, min(self.cell_timeout_s, remaining))
                self.runs[index] = run
                if run.status == "timed out" and not await self._interrupt():
                    await self._replace_kernel(index, deadline)
                elif run.status == "kernel died":
                    await self._replace_kernel(index, deadline)
        finally:
            await self._shutdown_kernel()
        return self.runs

    async def _execute(self, index: int, cell: NotebookNode, limit_s: float) -> CellRun:
        cell_id = cell.get("id", f"#{index}")
        self.client.timeout = max(1, math.ceil(limit_s))
        try:
            await self.client.async_execute_cell(cell, index)
        except CellTimeoutError:
            if limit_s < self.cell_timeout_s:
                limit = self.notebook_timeout_s
                detail = f"the notebook time limit of {limit:g} s was reached in cell {cell_id!r}"
            else:
                detail = f"cell {cell_id!r} ran longer than the cell time limit of {self.cell_timeout_s:g} s"
            logger.warning("%s: %s", self.label, detail)
            return CellRun(index, "timed out", detail=detail)
        except DeadKernelError:
            detail = f"the kernel died while running cell {cell_id!r}"
            logger.warning("%s: %s", self.label, detail)
            return CellRun(index, "kernel died", detail=detail)

        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                return CellRun(index, "error", ename=output.get("ename", ""), evalue=output.get("evalue", ""))
        return CellRun(index, "ok")

    async def _interrupt(self) -> bool:
        """Interrupt the kernel and return whether it became idle within INTERRUPT_GRACE_S."""
        assert self.client.km is not None and self.client.kc is not None
        try:
            await ensure_async(self.client.km.interrupt_kernel())
        except RuntimeError as error:
            logger.warning("%s: interrupting the kernel failed: %s", self.label, error)
            return False

        kc = self.client.kc
        probe_id = await ensure_async(kc.execute("", silent=True, store_history=False))
        deadline = time.monotonic() + INTERRUPT_GRACE_S
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                message = await ensure_async(kc.shell_channel.get_msg(timeout=remaining))
            except Empty:
                break
            if message["parent_header"].get("msg_id") == probe_id:
                return True
        logger.warning("%s: the kernel ignored the interrupt, so it is replaced", self.label)
        return False

    async def _replace_kernel(self, failed_index: int, deadline: float) -> None:
        """Start a new kernel and rerun the cells before ``failed_index`` that succeeded."""
        await self._shutdown_kernel()
        await self._start_kernel()

        for index in sorted(self.runs):
            if index >= failed_index or self.runs[index].status != "ok":
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            original = self.nb.cells[index]
            replay = copy.deepcopy(original)
            try:
                self.client.timeout = max(1, math.ceil(min(self.cell_timeout_s, remaining)))
                await self.client.async_execute_cell(replay, index)
            except (CellTimeoutError, DeadKernelError) as error:
                # The cell succeeded before, so this is unexpected. Later cells
                # run on a clean kernel and show their own errors.
                logger.warning(
                    "%s: rerunning cell %d on the new kernel failed (%s), so the notebook "
                    "continues on a clean kernel without the earlier state",
                    self.label,
                    index,
                    type(error).__name__,
                )
                await self._shutdown_kernel()
                await self._start_kernel()
                return
            finally:
                self.nb.cells[index] = original

    async def _start_kernel(self) -> None:
        km = AsyncKernelManager(
            kernel_name=KERNEL_NAME,
            kernel_spec_manager=CurrentPythonKernelSpecs(),
            # CurveZMQ encrypts the loopback traffic between grader and kernel where pyzmq supports it.
            transport_encryption="auto" if zmq.has("curve") else "disabled",
        )
        await km.start_kernel(cwd=str(self.cwd), env=self.env)
        self.client.km = km
        self.client.kc = None
        await self.client.async_start_new_kernel_client()
        logger.debug("%s: started kernel %s with %s", self.label, km.kernel_id, sys.executable)

    async def _shutdown_kernel(self) -> None:
        kc, km = self.client.kc, self.client.km
        self.client.kc = None
        self.client.km = None
        if kc is not None:
            await ensure_async(kc.stop_channels())
        if km is None:
            return
        try:
            await ensure_async(km.shutdown_kernel(now=True))
        except RuntimeError as error:
            # jupyter_client raises RuntimeError when the kernel process is already gone.
            logger.debug("%s: kernel shutdown: %s", self.label, error)
