"""Thin `torch.optim.Optimizer` adapters over the functional interface.

`LearnedOptimizer` runs any functional optimizer (usually loaded from a checkpoint) inside an ordinary
PyTorch training loop: `param_groups` with `lr` (a multiplier on the learned update, so LR schedulers
work), `zero_grad`, `step(closure)`, and `state_dict()/load_state_dict()` that resume exactly.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional

import torch
from torch import Tensor

from l2o import checkpoints
from l2o import optimizers as registry
from l2o.optimizers.base import FunctionalOptimizer, is_per_tensor, state_merge, state_subset

_STATE_KEY = "l2o"  # the functional State lives under this (non-parameter) key of `self.state`


class LearnedOptimizer(torch.optim.Optimizer):
    """A learned (or any functional) optimizer as a `torch.optim.Optimizer`.

    Args:
        params: parameters or param groups, as for any torch optimizer.
        checkpoint: path to a `.safetensors` checkpoint or the name of a shipped one.
        lr: multiplier on the learned update (1.0 = as meta-trained).
        optimizer: instead of a checkpoint, a FunctionalOptimizer (or registered name) ...
        meta: ... and its meta-parameters (default: its `init_meta` with seed 0).
        num_steps: planned number of steps, for architectures that condition on training progress
            (passed to the optimizer as context["horizon"]).
        context: other per-problem constants an architecture reads (e.g. {"smoothness": L}).
    """

    def __init__(
        self,
        params,
        checkpoint=None,
        lr: float = 1.0,
        *,
        optimizer: FunctionalOptimizer | str | None = None,
        meta: Optional[Dict[str, Tensor]] = None,
        num_steps: Optional[int] = None,
        context: Optional[Dict[str, float]] = None,
    ):
        if lr < 0:
            raise ValueError(f"invalid lr multiplier: {lr}")
        if (checkpoint is None) == (optimizer is None):
            raise ValueError("give exactly one of checkpoint=... or optimizer=...")
        if checkpoint is not None:
            lopt, meta, self.info = checkpoints.load(checkpoint)
        else:
            lopt = registry.build(optimizer) if isinstance(optimizer, str) else optimizer
            meta = meta if meta is not None else lopt.init_meta(torch.Generator().manual_seed(0))
            self.info = {}
        self.context = {k: torch.as_tensor(v, dtype=torch.float32) for k, v in (context or {}).items()}
        if num_steps is not None:
            if num_steps < 1:
                raise ValueError(f"num_steps must be ≥ 1, got {num_steps}")
            self.context["horizon"] = torch.tensor(float(num_steps))
        super().__init__(params, {"lr": lr})
        self.lopt = lopt
        self.meta = {k: v.detach() for k, v in meta.items()}

    # -- helpers ------------------------------------------------------------------------------------
    def _named_active(self) -> Dict[str, tuple]:
        """name -> (param, group) for parameters that have a gradient this step."""
        active = {}
        for gi, group in enumerate(self.param_groups):
            for pi, p in enumerate(group["params"]):
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError(f"{type(self).__name__} does not support sparse gradients (param group {gi})")
                active[f"g{gi}.p{pi}"] = (p, group)
        return active

    def _meta_for(self, ref: Tensor) -> Dict[str, Tensor]:
        if any(v.device != ref.device or (v.is_floating_point() and v.dtype != ref.dtype) for v in self.meta.values()):
            self.meta = {k: v.to(ref.device, ref.dtype if v.is_floating_point() else v.dtype) for k, v in self.meta.items()}
        return self.meta

    def _ensure_state(self, meta, params: Dict[str, Tensor]):
        """The functional State, initialized for parameters seen for the first time."""
        state = self.state.get(_STATE_KEY)
        context = {k: v.to(next(iter(params.values()))) for k, v in self.context.items()}
        if state is None:
            state = self.lopt.init_state(meta, params, context)
        else:
            missing = {n: p for n, p in params.items() if not any(is_per_tensor(v) and n in v for v in state.values())}
            if missing:
                fresh = self.lopt.init_state(meta, missing, context)
                state = {k: ({**v, **fresh[k]} if is_per_tensor(v) else v) for k, v in state.items()}
        self.state[_STATE_KEY] = state
        return state

    # -- torch.optim API --------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], Tensor]] = None, loss: Optional[Tensor] = None):
        """One update. The loss comes from `closure()` when given, else from `loss=` (may be None
        for architectures that don't read it). Returns the closure's loss, like torch optimizers."""
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        active = self._named_active()
        if not active:
            return loss
        if self.lopt.needs_loss and loss is None:
            raise ValueError(f"{self.lopt.name} reads the loss: call step(closure) or step(loss=loss)")
        params = {n: p for n, (p, _) in active.items()}
        grads = {n: p.grad for n, (p, _) in active.items()}
        ref = next(iter(params.values()))
        meta = self._meta_for(ref)
        state = self._ensure_state(meta, params)
        loss_t = None if loss is None else torch.as_tensor(loss.detach() if torch.is_tensor(loss) else loss).to(ref)
        new_params, new_part = self.lopt.step(meta, dict(params), grads, state_subset(state, params), loss_t)
        self.state[_STATE_KEY] = state_merge(state, new_part)
        for name, (p, group) in active.items():
            if group["lr"] == 1.0:
                p.copy_(new_params[name])
            else:
                p.add_(new_params[name] - p, alpha=group["lr"])
        return loss

