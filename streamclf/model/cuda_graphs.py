"""The image tower replayed as CUDA graphs: one launch per batch instead of one per kernel.

Why: the tower's forward pass is about 150 small kernels. At the batch sizes a handful of
cameras produce (1 to 16 frames), a GPU finishes each kernel faster than Python launches the
next, so the eager forward is bound by launches, not by the GPU. A CUDA graph records
the kernels of one forward pass for one input shape, and replays them all with one call.

A graph's shapes are fixed, and the daemon's batches vary (a camera drops out, gating skips
frames, zones add crops), so one graph is captured per *bucket*: the powers of two below
``model.batch_size``, and ``batch_size`` itself. A batch is copied into the smallest bucket
that holds it; the rows past it still hold earlier inputs, whose embeddings are computed and
dropped (each row of the tower is computed independently of the others). A larger batch
than the largest bucket (a zoned camera's crops) runs through it in chunks.

All graphs share one memory pool: they never run at once (the classifier's lock serialises
calls), and what one leaves in the pool's blocks the next overwrites. What a graph returns
is copied out before the next replay.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch


def graph_buckets(batch_size: int) -> tuple[int, ...]:
    """The batch sizes that get a graph: 1, 2, 4, ... below ``batch_size``, and ``batch_size``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    sizes = {batch_size}
    b = 1
    while b < batch_size:
        sizes.add(b)
        b *= 2
    return tuple(sorted(sizes))


@dataclass(frozen=True)
class CapturedGraph:
    """One recorded forward pass: ``replay()`` reads ``inputs`` and overwrites ``outputs``."""

    replay: Callable[[], None]
    inputs: torch.Tensor
    outputs: torch.Tensor


class GraphedEncoder:
    """``encode`` (an (N, C, H, W) -> (N, D) function of the rows alone) as CUDA graph replays.

    ``example`` gives the shape of one input row, its dtype and its device. Every bucket is
    captured here, largest first; capturing takes about as long as a few forward passes each.
    """

    def __init__(self, encode: Callable[[torch.Tensor], torch.Tensor], example: torch.Tensor, batch_size: int):
        self._encode = encode
        self.buckets = graph_buckets(batch_size)
        self._row_shape = tuple(example.shape[1:])
        self._dtype = example.dtype
        self._device = example.device
        # One memory pool for every bucket's graph (see the module's docstring). Any: torch names the
        # handle's type only privately.
        self._pool: Any = None
        started = time.perf_counter()
        self._graphs: dict[int, CapturedGraph] = {}
        for n in reversed(self.buckets):
            self._graphs[n] = self._capture(n)
        self.capture_s = time.perf_counter() - started

    def _capture(self, n: int) -> CapturedGraph:
        """Record ``encode`` on a static (n, ...) input; warm-up runs first, on a side stream as
        CUDA requires, so cuBLAS and attention pick and load their kernels outside the capture."""
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        with torch.inference_mode(), self._on_device():
            inputs = torch.zeros((n, *self._row_shape), dtype=self._dtype, device=self._device)
            side = torch.cuda.Stream(self._device)
            side.wait_stream(torch.cuda.current_stream(self._device))
            with torch.cuda.stream(side):
                for _ in range(2):
                    self._encode(inputs)
            torch.cuda.current_stream(self._device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._pool):
                outputs = self._encode(inputs)
        return CapturedGraph(graph.replay, inputs, outputs)

    def bucket_for(self, n: int) -> int:
        """The smallest bucket that holds ``n`` rows (``n`` at most the largest bucket)."""
        return next(b for b in self.buckets if b >= n)

    @torch.inference_mode()
    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        """``encode(pixels)``, computed by replaying the graph of the smallest bucket that holds it."""
        n = pixels.shape[0]
        largest = self.buckets[-1]
        if n > largest:
            return torch.cat([self(pixels[i : i + largest]) for i in range(0, n, largest)])
        graph = self._graphs[self.bucket_for(n)]
        with self._on_device():
            graph.inputs[:n].copy_(pixels)
            graph.replay()
            return graph.outputs[:n].clone()

    def _on_device(self):
        """Make the model's GPU the current one: a graph is captured and replayed on the current
        device's stream, which for ``model.device: cuda:1`` is not the model's unless set."""
        return torch.cuda.device(self._device) if self._device.type == "cuda" else contextlib.nullcontext()
