"""One optimiser step whose forward, loss and backward replay as one CUDA graph.

For small, launch-bound models (prism's decoder: hundreds of tiny kernels per step, 5 ms of
launches for well under 1 ms of GPU work) the launches are the step. A graph replays them all
with one launch. What is captured is forward + loss + backward of a FIXED batch; the optimiser
step stays eager (a few foreach kernels), so learning-rate schedules, the optimiser's state and
checkpoints work exactly as without graphs.

The rules of capture (PyTorch's "CUDA Graphs" notes) and how this class keeps them:
- warm up on a side stream before capturing: the first `warmup_steps` steps run eagerly there
  (real steps, not extra ones: the trajectory is that of the eager loop);
- static memory: the loss and the gradients live in the graph's pool and are overwritten by each
  replay, so nothing may set `.grad` to None between replays (zero_grad is not called; the
  captured backward writes the gradients, it does not accumulate into them);
- no host syncs and no collectives inside: single-process only (the caller checks);
- autocast's weight cache must be off while capturing (`precision.autocast(cache=False)`).
A new batch shape needs a new `CapturedStep`; dropping the old one frees its pool.
"""
from __future__ import annotations

from collections.abc import Callable

import torch


class CapturedStep:
    """Callable: one optimiser step on `compute_loss()`'s loss; returns the loss tensor (valid
    until the next call). Eager for the first `warmup_steps` calls, then graph replays."""

    def __init__(self, compute_loss: Callable[[], torch.Tensor], optimizer: torch.optim.Optimizer,
                 warmup_steps: int = 3):
        if warmup_steps < 1:
            raise ValueError(f"warmup_steps must be >= 1 (cuDNN/cuBLAS set up before capture), got {warmup_steps}")
        self.compute_loss, self.optimizer, self.warmup_steps = compute_loss, optimizer, warmup_steps
        self.calls = 0
        self.side_stream: torch.cuda.Stream | None = None
        self.graph: torch.cuda.CUDAGraph | None = None
        self.loss: torch.Tensor | None = None

    def __call__(self) -> torch.Tensor:
        self.calls += 1
        if self.calls <= self.warmup_steps:
            return self._warmup_step()
        if self.graph is None:
            self._capture()
        self.graph.replay()
        self.optimizer.step()
        return self.loss

    def _warmup_step(self) -> torch.Tensor:
        # one side stream for all the warm-up steps, and only detached losses handed out: a loss
        # that kept its autograd graph alive would keep its AccumulateGrad nodes, with their
        # stream, into the capture (PyTorch warns that this can break the capture)
        if self.side_stream is None:
            self.side_stream = torch.cuda.Stream()
        self.side_stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.side_stream):
            self.optimizer.zero_grad(set_to_none=True)
            loss = self.compute_loss()
            loss.backward()
            self.optimizer.step()
        torch.cuda.current_stream().wait_stream(self.side_stream)
        return loss.detach()

    def _capture(self) -> None:
        # gradients None at capture: the captured backward allocates them in the graph's pool
        self.optimizer.zero_grad(set_to_none=True)
        self.graph = torch.cuda.CUDAGraph()
        # thread_local: Ray Train runs this loop in a thread; other threads' CUDA calls are theirs
        with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
            loss = self.compute_loss()
            loss.backward()
        self.loss = loss.detach()  # the static output; the replays rewrite it
