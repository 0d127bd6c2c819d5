"""The one functional interface every optimizer in l2o implements, and the helpers they share.

An optimizer object holds only hyperparameters (a frozen dataclass). Everything that changes lives in
plain dicts of tensors that are passed in and returned, so `torch.func.vmap` (over tasks) and
`torch.autograd.grad` (through an unroll, for the meta-gradient) compose with every architecture:

    meta  = opt.init_meta(generator)                       # MetaParams: the learned weights
    state = opt.init_state(meta, params, context)          # State: per-run values
    updates, state = opt.update(meta, grads, state, params, loss)
    params = apply_updates(params, updates)                # = opt.step(meta, params, grads, state, loss)

`update` returning *updates* (not new parameters) is what lets rules compose as optax's do
(`l2o.optimizers.transforms`: chain, routing by parameter label, weight decay, orthogonalization, a
base optimizer plus a learned correction). An optimizer implements `update` or `step`; the base class
derives the other.

`context` (optional) is a dict of per-task constants an optimizer may condition on: "horizon" (the
planned number of steps; the trainer and `LearnedOptimizer(num_steps=...)` set it) and task-specific
facts such as "smoothness" (the Lipschitz constant L of the gradient, for `ntk_gd`). Optimizers read
what they need from it in `init_state` and keep it in their State.

State layout (the convention the `torch.optim` adapter relies on to skip parameters without a
gradient): each entry of a State is either a *per-tensor field*, a dict keyed exactly like Params
(one tensor per parameter tensor), or a *global* tensor (e.g. the step counter `t`).
"""

from __future__ import annotations

import abc
import dataclasses
import functools
from typing import ClassVar, Dict, Iterable, Optional, Tuple, Union

import torch
from torch import Tensor

from l2o.errors import ConfigError
from l2o.tree import cat_rows, flatten, split_rows, tree_map, unflatten, zeros_like_tree  # noqa: F401 (re-exported)

Params = Dict[str, Tensor]
MetaParams = Dict[str, Tensor]
State = Dict[str, Union[Tensor, Dict[str, Tensor]]]
Context = Dict[str, Tensor]


@dataclasses.dataclass(frozen=True)
class FunctionalOptimizer(abc.ABC):
    """Base of all optimizers: hyperparameters as dataclass fields, three pure methods.

    `init` selects how meta-parameters start: "random" (the paper's init) or "deterministic", an init
    whose first steps equal a named hand-designed optimizer with the learned correction at zero
    (docs/algorithms.md §6). Subclasses document which optimizer that is.

    Optional capabilities are declared here, not discovered: `has_fused_step` (a fused inference
    kernel, `fused_step`). The methods below `step` have defaults that fit most optimizers.
    """

    name: ClassVar[str] = ""
    needs_loss: ClassVar[bool] = False  # True if `update` reads the loss (the adapter then requires it)
    meta_trainable: ClassVar[bool] = True  # False for methods that learn online (LODO)
    has_fused_step: ClassVar[bool] = False  # True if `fused_step` is implemented

    def init_meta(self, generator: Optional[torch.Generator] = None) -> MetaParams:
        """Fresh meta-parameters (learned weights), drawn from `generator` when the init is random.
        Hand-designed transforms have none."""
        return {}

    @abc.abstractmethod
    def init_state(self, meta: MetaParams, params: Params, context: Optional[Context] = None) -> State:
        """Per-run state for `params` (on their device and dtype); `context` as in the module doc."""

    def update(
        self, meta: MetaParams, grads: Params, state: State, params: Params, loss: Optional[Tensor] = None
    ) -> Tuple[Params, State]:
        """One step's updates (params_new = params + updates) and the new state; pure.

        `grads` are the gradients, or the updates of the transform before this one in a chain."""
        if not _overrides(type(self), "step"):
            raise TypeError(f"{type(self).__name__} must implement update() or step()")
        new_params, state = self.step(meta, params, grads, state, loss)
        return tree_map(torch.sub, new_params, params), state

    def step(
        self, meta: MetaParams, params: Params, grads: Params, state: State, loss: Optional[Tensor] = None
    ) -> Tuple[Params, State]:
        """One optimizer step: new params and new state; pure, so vmap and grad compose."""
        if not _overrides(type(self), "update"):
            raise TypeError(f"{type(self).__name__} must implement update() or step()")
        updates, state = self.update(meta, grads, state, params, loss)
        return apply_updates(params, updates), state

    def scale_updates(self, updates: Params, state: State, scale: Dict[str, float]) -> Tuple[Params, State]:
        """`updates` times `scale[name]`: how a step-size multiplier (the torch.optim adapter's group
        lr) reaches this optimizer. Overridden where the state must record the step actually taken
        (LODO differentiates it)."""
        return {k: u if scale[k] == 1.0 else u * scale[k] for k, u in updates.items()}, state

    def learning_rate(self, meta: MetaParams, state: State) -> Union[Tensor, float]:
        """The step size η that decoupled weight decay is scaled by (p ← p - η·wd·p, as AdamW's lr):
        the learning rate of the hand-designed optimizer the deterministic init starts as, exp(log_lr).
        Architectures without that meta-parameter override it with their nominal step size."""
        if "log_lr" not in meta:
            raise ConfigError(f"{self.name} has no learning rate to scale weight decay by")
        return meta["log_lr"].exp()

    def starts_as(self, context: Optional[Context] = None) -> Optional["FunctionalOptimizer"]:
        """The hand-designed optimizer whose steps this one's equal at its deterministic init (the
        learned correction at zero), e.g. Adam; None if it has no such init. The conformance tests
        check the equality for every registered optimizer."""
        return None

    def fused_step(
        self, meta: MetaParams, params: Params, grads: Params, state: State, loss=None, scale=None, contain=None
    ) -> State:
        """Optional (`has_fused_step`): `step` through a fused kernel, for inference. Writes the
        parameters (and the state's tensors) in place and returns the new State; `scale` (name ->
        factor, default 1) multiplies each tensor's update as in `scale_updates`; `contain` (name,
        gradient -> gradient), when given, replaces a gradient the kernel found NaN or inf entries in
        before it is used (the adapter's containment, `l2o.torch_optim`)."""
        raise NotImplementedError(f"{self.name} has no fused step")

    def fused_unsupported(self) -> Optional[str]:
        """Why `fused_step` cannot run this optimizer's hyperparameters; None when it can."""
        return None if self.has_fused_step else f"{self.name} has no fused kernel"

    def hyperparameters(self) -> dict:
        """The constructor arguments, JSON-serializable: what a checkpoint stores to rebuild `self`."""
        return dataclasses.asdict(self)

    @classmethod
    def upgrade_hyperparameters(cls, hyper: dict) -> dict:
        """Hyperparameters as older checkpoints and configs wrote them, in today's form (`build` and
        `checkpoints.load` call this; architectures whose fields were regrouped override it)."""
        return hyper


def _overrides(cls, method: str) -> bool:
    return getattr(cls, method) is not getattr(FunctionalOptimizer, method)


def apply_updates(params: Params, updates: Params) -> Params:
    """params + updates, leafwise (optax's apply_updates)."""
    return {k: p + updates[k] for k, p in params.items()}


def is_per_tensor(value) -> bool:
    return isinstance(value, dict)


def state_subset(state: State, names: Iterable[str]) -> State:
    """The part of a State that concerns only the parameter tensors `names` (globals kept)."""
    names = list(names)
    # A routed transform (transforms.Partition) keeps per-tensor fields for its own tensors only.
    return {k: ({n: v[n] for n in names if n in v} if is_per_tensor(v) else v) for k, v in state.items()}


def state_merge(full: State, part: State) -> State:
    """Write a subset State (from `state_subset` + `step`) back into the full one."""
    return {k: ({**v, **part[k]} if is_per_tensor(v) else part[k]) for k, v in full.items()}


# ----------------------------------------------------------------------------------------------
# Small pure building blocks shared by architectures.


def bias_corrected(ema: Tensor, beta: float, t: Tensor) -> Tensor:
    """Adam's bias correction ema / (1 - beta^t), with t a tensor (counts steps taken, ≥ 1)."""
    return ema / (1 - beta**t)


def safe_sqrt(x: Tensor) -> Tensor:
    """sqrt(x) for x ≥ 0 whose derivative at 0 is 0 instead of inf (inf·0 would give NaN meta-gradients
    for coordinates whose gradient is identically zero)."""
    positive = x > 0
    return torch.where(positive, torch.where(positive, x, torch.ones_like(x)).sqrt(), torch.zeros_like(x))


def constant(values, ref: Tensor) -> Tensor:
    """torch.tensor(values) in ref's dtype and device, made once: steps ask for the same few constant
    vectors (decays, time scales) every call, and each torch.tensor costs ~15 µs on the CPU path."""
    if torch.compiler.is_compiling():
        return torch.tensor(values, dtype=ref.dtype, device=ref.device)
    return _constant(tuple(values) if isinstance(values, (list, tuple)) else values, ref.dtype, ref.device)


@functools.lru_cache(maxsize=256)
def _constant(values, dtype: torch.dtype, device: torch.device) -> Tensor:
    return torch.tensor(values, dtype=dtype, device=device)


def scalar_like(value: float, ref: Tensor) -> Tensor:
    return torch.full((), float(value), dtype=ref.dtype, device=ref.device)


def compile_step(lopt: FunctionalOptimizer, **compile_kwargs) -> FunctionalOptimizer:
    """A copy of `lopt` whose `update` (and so `step`) runs under `torch.compile` (for inference, e.g.
    LearnedOptimizer).

    Architectures may branch on `torch.compiler.is_compiling()` to use a fusion-friendly
    formulation. The copy has the same hyperparameters, so it saves to the same checkpoint; keep
    the plain object for meta-training (vmap and grad through a compiled step are not supported).
    """
    compiled = dataclasses.replace(lopt)
    object.__setattr__(compiled, "update", torch.compile(lopt.update, **compile_kwargs))
    return compiled
