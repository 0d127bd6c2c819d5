"""Thin `torch.optim.Optimizer` adapters over the functional interface.

`LearnedOptimizer` runs any functional optimizer (usually loaded from a checkpoint) inside an ordinary
PyTorch training loop: `param_groups` with `lr` (a multiplier on the learned update, so LR schedulers
work) and `weight_decay` (decoupled, as AdamW's), `zero_grad`, `step(closure)`, and
`state_dict()/load_state_dict()` that resume exactly.

A step reads each group's `lr` once and hands the multipliers to the optimizer, which applies them
to its updates (`FunctionalOptimizer.scale_updates`, or inside its fused kernel). Weight decay is
applied before the step: p ← p·(1 - lr·η·weight_decay), η the optimizer's `learning_rate` (its
base Adam's lr for the deterministic inits), so on a deterministic init the adapter is
torch.optim.AdamW(lr=η·lr, weight_decay) to float rounding.

Learned optimizers have no momentum hyperparameter. A scheduler that cycles momentum (OneCycleLR and
CyclicLR do unless `cycle_momentum=False`) is refused at the first step with that advice, rather
than its momentum being ignored: param groups carry `momentum=None` so that such a scheduler starts
and its first write is seen.

Non-finite gradient entries are contained here, once for every architecture: such an entry enters
the step as a zero gradient and its parameter is left unchanged, so one NaN cannot spread through
per-tensor normalizations, cross-tensor features or a shared preconditioner. The entries are
counted (`nonfinite_grads`) and the first occurrence warns. Finite gradients pay one sum per tensor,
except on the fused kernel's path without weight decay: its first pass reads every gradient anyway
and says whether one had such an entry, and only then is that gradient contained (and its pass
redone; it writes nothing), which is the same step.
"""

from __future__ import annotations

import math
import warnings
from typing import Callable, Dict, Optional, Tuple

import torch
from torch import Tensor

from l2o import checkpoints
from l2o import optimizers as registry
from l2o.errors import ConfigError, StateDictError
from l2o.optimizers.base import FunctionalOptimizer, is_per_tensor, state_merge, state_subset
from l2o.tree import map_nested

_STATE_KEY = "l2o"  # the functional State lives under this (non-parameter) key of `self.state`
# num_steps beyond this multiple of the training horizon warns: at 10× the quickstart checkpoint's
# wins against tuned Adam fall from 100% to about a third (checkpoints/lstm-quadratic10.md).
HORIZON_WARNING_FACTOR = 5
_WARNED_PAST_HORIZON: set = set()


class HorizonWarning(UserWarning):
    """A learned optimizer is asked to run far longer than it was meta-trained for."""


# Non-finite entries found in a step: name -> (mask, the parameter's values there, to put back).
Contained = Dict[str, Tuple[Tensor, Tensor]]


def contain_nonfinite(params: Dict[str, Tensor], grads: Dict[str, Tensor]) -> Tuple[Dict[str, Tensor], Contained]:
    """`grads` with non-finite entries replaced by zero, and what `restore` needs to keep those
    entries' parameters unchanged. Finite gradients (the usual case) cost one sum per tensor and
    one device sync, and come back as they are."""
    if next(iter(grads.values())).device.type == "meta":  # shapes without values: nothing to find
        return grads, {}
    sums = [g.sum(dtype=torch.promote_types(g.dtype, torch.float32)) for g in grads.values()]
    if math.isfinite(float(torch.stack(sums).sum())):  # a NaN or inf entry makes the sum non-finite
        return grads, {}
    found: Contained = {}
    for name, g in grads.items():
        bad = ~torch.isfinite(g)
        if bad.any():  # (a sum of finite entries that overflows finds nothing here)
            found[name] = (bad, params[name][bad])  # (a copy: boolean indexing gathers)
    return {n: torch.where(found[n][0], torch.zeros_like(g), g) if n in found else g for n, g in grads.items()}, found


def restore(params: Dict[str, Tensor], found: Contained) -> None:
    """Put the parameters at contained entries back to their values before the step."""
    for name, (bad, values) in found.items():
        params[name][bad] = values


class LearnedOptimizer(torch.optim.Optimizer):
    """A learned (or any functional) optimizer as a `torch.optim.Optimizer`.

    Args:
        params: parameters or param groups, as for any torch optimizer.
        checkpoint: path to a `.safetensors` checkpoint or the name of a shipped one.
        lr: multiplier on the learned update (1.0 = as meta-trained).
        weight_decay: decoupled weight decay p ← p·(1 - lr·η·weight_decay) before each step, η the
            optimizer's base learning rate (see the module doc); per param group like `lr`.
        optimizer: instead of a checkpoint, a FunctionalOptimizer (or registered name) ...
        meta: ... and its meta-parameters (default: its `init_meta` with seed 0).
        num_steps: planned number of steps, for architectures that condition on training progress
            (passed to the optimizer as context["horizon"]).
        context: other per-problem constants an architecture reads (e.g. {"smoothness": L}).
        fused: run architectures that have a fused CPU kernel (`mlp`, `velo`, `celo`, `celo-base`;
            `l2o.optimizers.fused`)
            through it, updating parameters and state in place: None (default) when it applies
            (float32 CPU tensors) and builds on this machine, else the functional step; True to
            require it (errors instead of falling back); False for the functional step always.
        overrides: with a checkpoint, hyperparameters of its architecture to replace, those that
            change how the trained weights are applied (e.g. `{"ns_dtype": "bfloat16"}` for celo's
            faster Newton–Schulz, `{"max_horizon": None}`); a name it lacks is an error.
    """

    def __init__(
        self,
        params,
        checkpoint=None,
        lr: float = 1.0,
        *,
        weight_decay: float = 0.0,
        optimizer: FunctionalOptimizer | str | None = None,
        meta: Optional[Dict[str, Tensor]] = None,
        num_steps: Optional[int] = None,
        context: Optional[Dict[str, float]] = None,
        fused: Optional[bool] = None,
        overrides: Optional[Dict[str, object]] = None,
    ):
        if not 0 <= lr < math.inf:  # (nan fails every comparison)
            raise ConfigError(f"invalid lr multiplier: {lr} (a finite number ≥ 0)")
        if not 0 <= weight_decay < math.inf:
            raise ConfigError(f"invalid weight_decay: {weight_decay} (a finite number ≥ 0)")
        if (checkpoint is None) == (optimizer is None):
            raise ValueError("give exactly one of checkpoint=... or optimizer=...")
        if overrides and checkpoint is None:
            raise ValueError("overrides=... changes a checkpoint's hyperparameters; with optimizer=..., build it with them")
        if checkpoint is not None:
            lopt, meta, self.info = checkpoints.load(checkpoint, overrides=overrides)
        else:
            lopt = registry.build(optimizer) if isinstance(optimizer, str) else optimizer
            meta = meta if meta is not None else lopt.init_meta(torch.Generator().manual_seed(0))
            self.info = {}
        self.context = {k: torch.as_tensor(v, dtype=torch.float32) for k, v in (context or {}).items()}
        if num_steps is not None:
            if num_steps < 1:
                raise ValueError(f"num_steps must be ≥ 1, got {num_steps}")
            self.context["horizon"] = torch.tensor(float(num_steps))
            self._warn_past_horizon(num_steps, checkpoint)
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay, "momentum": None})
        self.lopt = lopt
        self.meta = {k: v.detach() for k, v in meta.items()}
        self.nonfinite_grads = 0  # gradient entries contained so far (see the module doc)
        if fused and not lopt.has_fused_step:
            raise ValueError(f"{lopt.name} has no fused kernel (fused=True needs mlp, velo, celo or celo-base)")
        if fused and lopt.fused_unsupported():
            from l2o.optimizers.fused import FusedUnavailable

            raise FusedUnavailable(lopt.fused_unsupported())
        self.fused = fused

    # -- helpers ------------------------------------------------------------------------------------
    def add_param_group(self, param_group: dict) -> None:
        """As torch's, refusing what the functional step cannot take: complex or integer
        parameters, and parameters of different dtypes (the architectures concatenate them). A
        refused group is not added."""
        super().add_param_group(param_group)
        everything = [p for group in self.param_groups for p in group["params"]]
        unusable = next((p for p in everything if p.is_complex() or not p.is_floating_point()), None)
        dtypes = sorted({str(p.dtype).replace("torch.", "") for p in everything})
        if unusable is not None or len(dtypes) > 1:
            self.param_groups.pop()
        if unusable is not None:
            raise ConfigError(
                f"{type(self).__name__} needs real floating-point parameters, got a {unusable.dtype} one"
                + (" (split it with torch.view_as_real)" if unusable.is_complex() else "")
            )
        if len(dtypes) > 1:
            raise ConfigError(
                f"{type(self).__name__} needs all parameters in one dtype, got {', '.join(dtypes)}; "
                "use one optimizer per dtype"
            )

    def _contain(self, params: Dict[str, Tensor], grads: Dict[str, Tensor]) -> Tuple[Dict[str, Tensor], Contained]:
        grads, found = contain_nonfinite(params, grads)
        self._count_contained(found, stacklevel=4)
        return grads, found

    def _container(self, params: Dict[str, Tensor], found: Contained):
        """`contain` for a fused step: contains one gradient the kernel found non-finite entries in,
        recording into `found` what `restore` needs."""

        def contain(name: str, g: Tensor) -> Tensor:
            grads, mine = contain_nonfinite({name: params[name]}, {name: g})
            found.update(mine)
            return grads[name]

        return contain

    def _count_contained(self, found: Contained, stacklevel: int = 3) -> None:
        if found:
            count = sum(int(bad.sum()) for bad, _ in found.values())
            if not self.nonfinite_grads:
                warnings.warn(
                    f"{type(self).__name__}: {count} non-finite gradient entries; each gets a zero update and its "
                    "gradient counts as zero (counted in .nonfinite_grads; this warning is shown once)",
                    RuntimeWarning,
                    stacklevel=stacklevel,
                )
            self.nonfinite_grads += count

    def _warn_past_horizon(self, num_steps: int, checkpoint) -> None:
        """Warn (once per checkpoint and process) when `num_steps` is far past the horizon the
        checkpoint was meta-trained for: learned optimizers often degrade there."""
        from l2o import cards

        trained = cards.training_horizon(self.info) if checkpoint is not None else None
        if not trained or num_steps <= HORIZON_WARNING_FACTOR * trained or str(checkpoint) in _WARNED_PAST_HORIZON:
            return
        _WARNED_PAST_HORIZON.add(str(checkpoint))
        card = cards.summary(checkpoint)
        warnings.warn(
            f"{card.name} was meta-trained for {trained}-step runs; num_steps={num_steps} is "
            f"{num_steps / trained:.0f}× that, where learned optimizers often fall behind tuned Adam "
            f"(its card: {card.model_card or '`l2o list`'}; measure it with `l2o evaluate --checkpoint {checkpoint} "
            f"--horizons 1,{-(-num_steps // trained)}`)",
            HorizonWarning,
            stacklevel=3,
        )

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
    def load_state_dict(self, state_dict) -> None:
        """As torch optimizers do, state saved on another device (a GPU run's state loaded with
        `map_location="cpu"`, or the reverse) moves to the parameters' device: torch copies state
        kept under a non-parameter key, like ours, as it is.

        The state is checked first against what this optimizer would build for these parameters
        (its fields, tensor names and shapes): one from another model, another architecture or
        another optimizer class is refused with a StateDictError, and nothing changes."""
        self._check_state_dict(state_dict)
        try:
            super().load_state_dict(state_dict)
        except ValueError as err:  # torch's own checks (number and sizes of param groups)
            raise StateDictError(f"cannot load this state_dict: {err}") from None
        state = self.state.get(_STATE_KEY)
        if state is not None:
            device = self.param_groups[0]["params"][0].device
            self.state[_STATE_KEY] = map_nested(lambda v: v.to(device), state)

    def _check_state_dict(self, state_dict) -> None:
        what = f"this state_dict does not belong to this {type(self).__name__} ({self.lopt.name})"
        if not isinstance(state_dict, dict) or not isinstance(state_dict.get("state"), dict):
            raise StateDictError(f"{what}: not an optimizer state_dict")
        extra = [k for k in state_dict["state"] if k != _STATE_KEY]
        if extra:
            raise StateDictError(f"{what}: it keeps state per parameter ({extra[:3]}...), as torch.optim optimizers do")
        options = {k for g in state_dict.get("param_groups") or [] if isinstance(g, dict) for k in g}
        foreign = sorted(options - {k for g in self.param_groups for k in g})
        if foreign:
            raise StateDictError(f"{what}: its param groups have options {', '.join(foreign)} of another optimizer class")
        saved = state_dict["state"].get(_STATE_KEY)
        if saved is None:
            return  # saved before the first step: nothing to check
        params = {f"g{gi}.p{pi}": p for gi, g in enumerate(self.param_groups) for pi, p in enumerate(g["params"])}
        with torch.no_grad():
            meta = self._meta_for(next(iter(params.values())))
            context = {k: v.to(next(iter(params.values()))) for k, v in self.context.items()}
            expected = self.lopt.init_state(meta, {n: p.detach() for n, p in params.items()}, context)
        problems = _state_problems(saved, expected)
        if problems:
            raise StateDictError(f"{what}: {'; '.join(problems[:3])}")

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
        _refuse_momentum(self)
        params = {n: p for n, (p, _) in active.items()}
        grads = {n: p.grad for n, (p, _) in active.items()}
        ref = next(iter(params.values()))
        meta = self._meta_for(ref)
        state = self._ensure_state(meta, params)
        loss_t = None if loss is None else torch.as_tensor(loss.detach() if torch.is_tensor(loss) else loss).to(ref)
        part = state_subset(state, params)
        lrs = {name: float(group["lr"]) for name, (_, group) in active.items()}  # the one read of each lr
        fused_path = self._fused_applies(params, grads, part)
        # The fused kernel finds non-finite entries itself (module doc); weight decay comes first and
        # would change the values `restore` keeps, so with it the check stays here.
        contained: Contained = {}
        kernel_checks = fused_path and not any(group.get("weight_decay") for _, group in active.values())
        if not kernel_checks:
            grads, contained = self._contain(params, grads)
        self._decay_weights(active, lrs, meta, part)
        if fused_path:
            contain = self._container(params, contained) if kernel_checks else None
            new_part = self.lopt.fused_step(meta, params, grads, part, loss_t, scale=lrs, contain=contain)
            self._count_contained(contained)
            for p in params.values():
                torch.autograd.graph.increment_version(p)  # the kernel wrote p through its pointer
        else:
            updates, new_part = self.lopt.update(meta, grads, part, params, loss_t)
            updates, new_part = self.lopt.scale_updates(updates, new_part, lrs)
            for name, p in params.items():
                p.add_(updates[name])
        self.state[_STATE_KEY] = state_merge(state, new_part)
        restore(params, contained)
        return loss

    def _decay_weights(self, active: Dict[str, tuple], lrs: Dict[str, float], meta, state) -> None:
        """p ← p·(1 - lr·η·weight_decay) for the groups that set one (decoupled, as AdamW)."""
        decays = {name: group.get("weight_decay", 0.0) for name, (_, group) in active.items()}
        if not any(decays.values()):
            return
        eta = float(self.lopt.learning_rate(meta, state))
        for name, (p, _) in active.items():
            if decays[name]:
                p.mul_(1 - lrs[name] * eta * decays[name])

    def _fused_applies(self, params: Dict[str, Tensor], grads: Dict[str, Tensor], state) -> bool:
        """Whether this step runs through the fused kernel (see `fused` in the class doc)."""
        if self.fused is False or not self.lopt.has_fused_step:
            return False
        from l2o.optimizers import fused

        tensors = [*params.values(), *grads.values()]
        tensors += [t for v in state.values() if is_per_tensor(v) for t in v.values()]
        if self.fused:  # required (its hyperparameters were checked at construction): say why not
            fused.kernels()
            if not fused.applies_to(tensors):
                raise fused.FusedUnavailable("fused=True needs contiguous float32 CPU parameters, gradients and state")
            return True
        return self.lopt.fused_unsupported() is None and fused.applies_to(tensors) and fused.available()


def _refuse_momentum(opt: torch.optim.Optimizer) -> None:
    """A scheduler wrote a momentum (see the module doc): say how to keep it from doing so."""
    if any(group.get("momentum") is not None for group in opt.param_groups):
        raise ConfigError(
            f"{type(opt).__name__} has no momentum for a scheduler to set (OneCycleLR and CyclicLR cycle "
            "momentum by default): create the scheduler with cycle_momentum=False"
        )


class LODO(LearnedOptimizer):
    """LODO (Liao et al. 2023): a quasi-Newton preconditioner learned online, as a torch optimizer.

    No checkpoint and no meta-training: the preconditioner G(θ) = -lr·ΠᵀAᵀAΠ starts as -lr·I and
    θ is trained during your run by Adam(meta_lr) on the one-step-lookahead hypergradient
    (`l2o.optimizers.lodo`; docs/lodo.md). Use it like any torch optimizer:

        opt = l2o.LODO(model.parameters(), lr=1.0)
        loss.backward(); opt.step(); opt.zero_grad()

    No second forward pass: the gradient you compute at the current parameters, x_{t+1} = x_t +
    G(θ_t)m_t (what the previous `step` wrote), is also the cotangent of the hypergradient
    ∂f/∂θ_t = (∂x_{t+1}/∂θ_t)ᵀ∇f(x_{t+1}); the step keeps m_t, θ_t and the lr it used in its state
    and differentiates that stored step in closed form before taking the next one.

    Args:
        params: parameters or param groups.
        lr: lr₀, the initial step size (a group's `lr` scales G, so LR schedulers work).
        meta_lr: Adam's learning rate for the preconditioner's weights θ.
        beta: momentum of m (0 disables momentum).
        depth, block: layers of the network A and its block size (θ ≈ 2·depth·block numbers per
            parameter, plus 2× that for Adam: 384 per parameter at the defaults).
        structure: "lodo" (default) or the ablations "diagonal", "scalar".
        partition: "tensor" (one G per parameter tensor, the default) or "flat" (one G over all
            parameters, the paper's setup; then every parameter needs a gradient at every step and
            all groups one lr).
        weight_decay: decoupled weight decay p ← p·(1 - lr·weight_decay) before each step (per
            param group, as AdamW's).
        chunk_size: > 0 splits each tensor (or the flat vector) into chunks with their own G (they
            share one set of permutations, which saves 256 B per parameter).
        seed: draws the fixed permutations and initial orthogonal blocks.
    """

    def __init__(
        self,
        params,
        lr: float = 1.0,
        meta_lr: float = 1e-3,
        beta: float = 0.9,
        depth: int = 16,
        block: int = 4,
        *,
        weight_decay: float = 0.0,
        structure: str = "lodo",
        partition: str = "tensor",
        chunk_size: int = 0,
        seed: int = 0,
    ):
        if not 0 < lr < math.inf:
            raise ConfigError(f"invalid lr: {lr} (LODO needs a finite lr > 0)")
        from l2o.optimizers.lodo import LODOFunctional

        lopt = LODOFunctional(
            lr=1.0,
            meta_lr=meta_lr,
            beta=beta,
            depth=depth,
            block=block,
            structure=structure,
            partition=partition,
            chunk_size=chunk_size,
            seed=seed,
        )
        super().__init__(params, lr=lr, weight_decay=weight_decay, optimizer=lopt)

    def _named_active(self) -> Dict[str, tuple]:
        active = super()._named_active()
        if self.lopt.partition == "flat" and active:
            every = {f"g{gi}.p{pi}" for gi, group in enumerate(self.param_groups) for pi in range(len(group["params"]))}
            if set(active) != every:
                missing = sorted(every - set(active))
                raise ValueError(
                    f"LODO(partition='flat') needs a gradient for every parameter at every step; none for {missing}. "
                    "Use partition='tensor' to skip parameters without gradients."
                )
        return active


def _state_problems(saved, expected, path: str = "") -> list:
    """How a saved functional State differs in structure from the one expected (fields, the
    parameter names of per-tensor fields, shapes); empty when it fits."""
    if not isinstance(saved, dict):
        return [f"{path or 'state'} is a {type(saved).__name__}"]
    problems = [f"unexpected field {path}{k}" for k in saved if k not in expected]
    problems += [f"missing field {path}{k}" for k in expected if k not in saved and not path]
    for k in saved:
        if k not in expected:
            continue
        want, have = expected[k], saved[k]
        if isinstance(want, dict):
            problems += _state_problems(have, want, f"{path}{k}.")
        elif not isinstance(have, Tensor):
            problems.append(f"{path}{k} is a {type(have).__name__}, not a tensor")
        elif have.shape != want.shape:
            problems.append(f"{path}{k}: shape {tuple(have.shape)} != {tuple(want.shape)}")
    return problems
