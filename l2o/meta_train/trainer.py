"""The meta-training loop: estimator → clipped meta-gradient → Adam on the meta-parameters.

Everything random derives from (config.seed, task-group counters), and the carried inner state is
saved with the meta-optimizer's, so `--resume` continues the same trajectory an uninterrupted run
would have taken — bitwise on CPU, also after `kill -9`: both files are written atomically, and the
training state (meta-params, Adam moments, every group's tasks, inner params and optimizer state,
estimator accumulators, counters, history) is the only thing a resumed run reads.
Under torchrun each rank trains its share of the task groups (see distributed.py).
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path
from typing import Dict, Optional

import torch

from l2o import checkpoints, optimizers
from l2o.devices import resolve_device
from l2o.errors import CheckpointError, ConfigError, NonFiniteError, OutputError, RunDirectoryError
from l2o.meta_train import distributed
from l2o.meta_train.config import Config
from l2o.meta_train.distributed import Collective
from l2o.meta_train.estimators import build_estimator
from l2o.meta_train.schedules import HorizonSchedule
from l2o.meta_train.truncation import compile_unavailable
from l2o.meta_train.unroll import TaskGroup
from l2o.meta_train.validation import MetaValidator
from l2o.task_distributions import get_suite
from l2o.task_distributions.base import generator
from l2o.task_distributions.suites import suite_spec

CHECKPOINT = "checkpoint.safetensors"  # the best by meta-validation when validation is on, else the last
LAST = "last.safetensors"  # the last meta-parameters, beside the best
TRAIN_STATE = "train_state.safetensors"
_RUN_FILES = (CHECKPOINT, "checkpoint.json", LAST, "last.json", TRAIN_STATE, "config.json", "tb")
# What a start that stopped before its first checkpoint leaves (nothing that could be resumed).
_LEFTOVERS = ("config.json", "tb")
MAX_SKIPPED_IN_A_ROW = 10  # meta-updates skipped in a row (nothing finite to learn from) that stop a run


class MetaTrainer:
    """Owns one run directory: builds the optimizer, task groups and meta-optimizer, then trains."""

    def __init__(
        self,
        config: Config,
        out_dir,
        resume: bool = False,
        overwrite: bool = False,
        progress: bool = True,
        collective: Optional[Collective] = None,
    ):
        self.config = config.validate()
        self.out = Path(out_dir)
        if config.threads:
            torch.set_num_threads(config.threads)
        device = resolve_device(config.device)
        if collective is None:
            collective, device = distributed.from_env(device)
        self.collective, self.device = collective, device
        self.progress = progress and collective.is_main
        no_compile = compile_unavailable(device) if config.compile else None
        if no_compile:
            raise ConfigError(f"compile = true: {no_compile}; or set compile = false")
        self._check_directory(resume, overwrite)
        self.lopt = optimizers.build(config.optimizer, **config.optimizer_args)
        if not self.lopt.meta_trainable:
            raise ConfigError(f"{config.optimizer} learns online and has nothing to meta-train")
        self.suite = get_suite(config.suite)
        self.horizon = config.horizon or self.suite.horizon
        if self.horizon % config.unroll_length:
            raise ConfigError(
                f"the inner horizon ({self.horizon}) must be a multiple of unroll_length ({config.unroll_length})"
            )
        schedule = HorizonSchedule(
            self.horizon,
            config.unroll_length,
            kind=config.horizon_schedule,
            low=config.horizon_min or config.unroll_length,
            random_offsets=config.random_offsets,
            seed=config.seed,
        )
        meta = self.lopt.init_meta(generator(config.seed, 0))
        self.meta = {k: v.to(self.device).requires_grad_(True) for k, v in meta.items()}
        self.meta_opt = torch.optim.Adam(self.meta.values(), lr=config.meta_lr)
        self.estimator = build_estimator(config.estimator, meta_loss=config.meta_loss, sigma=config.sigma)
        # The global list of groups (replica-major, so ranks get a mix of families); this rank's share.
        replicas = config.groups_per_family or collective.world_size
        families = self.suite.families
        self.n_groups = replicas * len(families)
        if self.n_groups < collective.world_size:
            raise ConfigError(
                f"{self.n_groups} task group(s) cannot be split over {collective.world_size} processes; "
                f"set groups_per_family ≥ {-(-collective.world_size // len(families))} (or 0: one per process)"
            )
        self.group_positions = list(range(collective.rank, self.n_groups, collective.world_size))
        self.groups = [
            TaskGroup(
                families[j % len(families)],
                self.lopt,
                config.tasks_per_family,
                self.horizon,
                config.unroll_length,
                config.seed,
                group_id=j,  # = family index + n_families · replica: replica 0 keeps the family's id
                device=self.device,
                second_order=config.second_order,
                schedule=schedule,
                antithetic=self.estimator.antithetic,
                compile=config.compile,
            )
            for j in self.group_positions
        ]
        self.step = 0
        self.counters = {"skipped_updates": 0, "nonfinite_tasks": 0}
        self.history: Dict[str, list] = {"meta_loss": [], "meta_grad_norm": [], "inner_loss": [], "validation": []}
        self.validator = None
        if config.validate_every:
            steps = config.validation_steps or self.horizon
            self.validator = MetaValidator(self.lopt, self.suite, config.validation_tasks, steps, self.device)
        self._skipped_in_a_row, self._task_slots = 0, None  # see _apply
        self._claim_directory(resume)  # everything above validated: only now may the disk change
        if resume:
            self._load_train_state()
        else:
            for group in self.groups:
                group.start(self.meta)

    # -- run directory ------------------------------------------------------------------------------
    def _check_directory(self, resume: bool, overwrite: bool) -> None:
        """Check (every rank, writing nothing) that the directory is ours to use."""
        if resume:
            if not (self.out / TRAIN_STATE).is_file():
                hint = ""
                if self.out.is_dir() and self._never_saved():
                    hint = "; the run stopped before its first checkpoint: start it again without --resume"
                raise RunDirectoryError(f"--resume: no training state in {self.out} (expected {TRAIN_STATE}){hint}")
            return
        if self.out.exists() and not self.out.is_dir():
            raise RunDirectoryError(f"--out {self.out} is a file, not a folder")
        if self.out.is_dir() and not overwrite and not self._never_saved():
            raise RunDirectoryError(
                f"{self.out} already holds files; pass --resume to continue that run or --overwrite to replace it"
            )

    def _never_saved(self) -> bool:
        """Whether the directory is empty or holds only what a start that never checkpointed leaves
        (its config.json and TensorBoard folder, temp files): nothing to resume, so a fresh start
        may take it over without --overwrite."""
        for entry in self.out.iterdir():
            if entry.name.startswith(".") and entry.name.endswith(".tmp"):
                continue
            if entry.name not in _LEFTOVERS:
                return False
        try:
            saved = json.loads((self.out / "config.json").read_text())
        except FileNotFoundError:
            return True
        except (OSError, ValueError):
            return False
        return isinstance(saved, dict) and set(saved) <= set(Config().to_dict())

    def _claim_directory(self, resume: bool) -> None:
        """Rank 0 writes config.json, then clears what an earlier run left (--overwrite), while the
        others wait. config.json goes first (atomically): a folder it cannot be written to fails
        here with nothing deleted."""
        if resume:
            return
        self.collective.barrier()
        if self.collective.is_main:
            try:
                self.out.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise OutputError(f"cannot create the run folder {self.out}: {err.strerror or err}") from None
            config_text = json.dumps(self.config.to_dict(), indent=2) + "\n"
            checkpoints.atomic_write(self.out / "config.json", config_text.encode())
            for name in _RUN_FILES:
                path = self.out / name
                if name != "config.json" and path.exists():
                    shutil.rmtree(path) if path.is_dir() else path.unlink()
            for stale in self.out.glob(".*.tmp"):  # left by a kill -9 mid-write
                stale.unlink()
        self.collective.barrier()

    # -- persistence ------------------------------------------------------------------------------
    def checkpoint_info(self) -> Dict:
        return {
            "config": self.config.to_dict(),
            "suite": self.config.suite,
            "suite_spec": suite_spec(self.config.suite),  # loads the same suite from any directory
            "outer_steps": self.step,
            "final_meta_loss": self.history["meta_loss"][-1] if self.history["meta_loss"] else None,
            **({"validation": self.best_validation()} if self.validator else {}),
        }

    def best_validation(self) -> Optional[Dict]:
        """{"step", "score"} of the best meta-validation so far (lowest score), None before the first."""
        valid = [(score, step) for step, score in self.history.get("validation", [])]
        if not valid:
            return None
        score, step = min(valid)
        return {"step": step, "score": score}

    def _validate(self, writer) -> None:
        """Score the current meta-params; when they are the best so far they become the checkpoint."""
        score = self.validator.score(self.meta)
        best = self.best_validation()
        self.history["validation"].append([self.step, score])
        if writer is not None:
            writer.add_scalar("meta_valid/score", score, self.step)
        if self.collective.is_main and (best is None or score < best["score"]):
            checkpoints.save(self.out / CHECKPOINT, self.lopt, self.meta, self.checkpoint_info())

    def save(self) -> None:
        """Rank 0 writes the checkpoint and the training state (with every rank's groups, gathered).

        Non-finite meta-parameters are never written. A write that fails (disk full, ...) leaves the
        previous files whole (atomic writes) and stops the run with an OutputError that says so."""
        if not self._meta_finite():
            raise NonFiniteError(f"outer step {self.step}: meta-parameters are non-finite; not saved; {self._last_good()}")
        mine = {
            "groups": [(j, _to_cpu(g.state_dict())) for j, g in zip(self.group_positions, self.groups)],
            "rng": _rng_state(self.device),
        }
        gathered = self.collective.gather(mine)
        if not self.collective.is_main:
            return
        groups = dict(item for rank in gathered for item in rank["groups"])
        try:
            self._write(groups, gathered)
        except OutputError as err:
            raise OutputError(f"outer step {self.step}: {err}; {self._last_good()} (kept intact)") from None

    def _write(self, groups: Dict, gathered) -> None:
        checkpoints.save(self._latest(), self.lopt, self.meta, self.checkpoint_info())
        tensors: Dict[str, torch.Tensor] = {}
        payload = {
            "meta": self.meta,
            "meta_opt": self.meta_opt.state_dict(),
            "groups": [groups[j] for j in range(self.n_groups)],
            # l2o draws nothing from global RNGs; saved for losses that do (dropout), one per rank.
            "rng": [rank["rng"] for rank in gathered],
            "counters": self.counters,
            "history": self.history,
        }
        skeleton = checkpoints.encode(payload, tensors)
        header = {
            "format_version": checkpoints.FORMAT_VERSION,
            "kind": "train_state",
            "step": self.step,
            "config": self.config.to_dict(),
            "skeleton": skeleton,
        }
        checkpoints.write_tensors(self.out / TRAIN_STATE, tensors, header)

    def _latest(self) -> Path:
        """The checkpoint `save` writes: the last meta-params (beside the best, with meta-validation)."""
        return self.out / (LAST if self.validator else CHECKPOINT)

    def _last_good(self) -> str:
        """Where the last complete checkpoint is (read back from the file: what a user would load)."""
        path = self._latest()
        try:
            _, header = checkpoints.read_tensors(path)
            return f"the last good checkpoint is {path} (outer step {header['info']['outer_steps']})"
        except (CheckpointError, KeyError, TypeError):
            return f"no checkpoint was written to {self.out} yet"

    def _meta_finite(self) -> bool:
        return bool(torch.stack([torch.isfinite(v).all() for v in self.meta.values()]).all())

    def _load_train_state(self) -> None:
        tensors, header = checkpoints.read_tensors(self.out / TRAIN_STATE)
        if header.get("kind") != "train_state":
            raise RunDirectoryError(f"{self.out / TRAIN_STATE} is not a training state")
        saved_cfg = dict(header["config"])
        mine = self.config.to_dict()
        # outer_steps may grow on resume (train longer); anything else changing would fork the run.
        free = ("outer_steps", "device", "threads", "compile", "checkpoint_every", "log_every")
        changed = [k for k in mine if k not in free and saved_cfg.get(k, Config().to_dict()[k]) != mine[k]]
        if changed:
            raise ConfigError(f"--resume with a different config ({', '.join(changed)}); start a new run instead")
        payload = checkpoints.decode(header["skeleton"], tensors)
        if len(payload["groups"]) != self.n_groups:
            raise ConfigError(
                f"{self.out} was trained with {len(payload['groups'])} task groups, this launch has {self.n_groups} "
                "(groups_per_family = 0 means one per process): resume with the same number of processes"
            )
        with torch.no_grad():
            for k, v in self.meta.items():
                v.copy_(payload["meta"][k])
        self.meta_opt.load_state_dict(payload["meta_opt"])
        for j, group in zip(self.group_positions, self.groups):
            group.load_state_dict(payload["groups"][j], self.meta)
        rng = payload.get("rng", [])
        if len(rng) == self.collective.world_size:
            _set_rng_state(rng[self.collective.rank], self.device)
        self.counters = payload["counters"]
        self.history = payload["history"]
        self.history.setdefault("validation", [])
        self.step = header["step"]

    # -- training -------------------------------------------------------------------------------------
    def _apply(self, grads: Dict[str, torch.Tensor], stats: Optional[Dict] = None) -> float:
        """Clip and apply a meta-gradient.

        A non-finite one, or one from an outer step in which no task stayed finite (nothing to learn
        from: it is zero), is counted and skipped, never applied. MAX_SKIPPED_IN_A_ROW skips in a row
        (all of a shorter run's), or an update that makes a meta-parameter non-finite, stop the run
        with a NonFiniteError before anything is written.
        """
        norm = torch.sqrt(sum((g.double() ** 2).sum() for g in grads.values())).item()
        no_finite_task = stats is not None and stats["nonfinite_tasks"] >= self._n_tasks()
        if not math.isfinite(norm) or no_finite_task:
            self.counters["skipped_updates"] += 1
            self._skipped_in_a_row += 1
            if self._skipped_in_a_row >= min(MAX_SKIPPED_IN_A_ROW, self.config.outer_steps):
                what = "every task was non-finite" if no_finite_task else "the meta-gradient was non-finite"
                raise NonFiniteError(
                    f"outer step {self.step + 1}: no meta-update applied in {self._skipped_in_a_row} steps in a row "
                    f"({what}; check the suite's losses, the optimizer's hyperparameters or meta_lr); {self._last_good()}"
                )
            return norm
        self._skipped_in_a_row = 0
        clip = self.config.meta_grad_clip
        scale = min(1.0, clip / (norm + 1e-12)) if clip > 0 else 1.0
        for k, p in self.meta.items():
            p.grad = grads[k] * scale
        self.meta_opt.step()
        if not self._meta_finite():
            raise NonFiniteError(
                f"outer step {self.step + 1}: the meta-update made meta-parameters non-finite "
                f"(meta_lr {self.config.meta_lr} too high?); nothing written; {self._last_good()}"
            )
        return norm

    def _n_tasks(self) -> float:
        """Task slots of all ranks (an antithetic pair is one), which stats["nonfinite_tasks"] counts."""
        if self._task_slots is None:
            self._task_slots = self.collective.sum_floats([sum(g.size for g in self.groups)])[0]
        return self._task_slots

    def train(self) -> Dict:
        from torch.utils.tensorboard import SummaryWriter
        from tqdm.auto import tqdm

        cfg = self.config
        main = self.collective.is_main
        writer = SummaryWriter(str(self.out / "tb"), purge_step=self.step) if main else None
        # Inner steps of every trajectory of every rank (antithetic groups run two per task).
        trajectories = self.collective.sum_floats([sum(g.size * g.copies for g in self.groups)])[0]
        inner_per_step = cfg.unroll_length * int(trajectories)
        saved_at = self.step
        bar = tqdm(
            total=cfg.outer_steps, initial=self.step, desc=f"meta-train {cfg.optimizer}", disable=not self.progress
        )
        start, started_at = time.perf_counter(), self.step
        try:
            if self.validator and not self.history["validation"]:
                self._validate(writer)  # the init is the first candidate: a run never ships worse
            while self.step < cfg.outer_steps:
                t0 = time.perf_counter()
                grads, stats = self.estimator.meta_gradient(self.meta, self.groups, self.collective)
                norm = self._apply(grads, stats)
                self.step += 1
                self.counters["nonfinite_tasks"] += int(stats["nonfinite_tasks"])
                self.history["meta_loss"].append(stats["meta_loss"])
                self.history["meta_grad_norm"].append(norm)
                self.history["inner_loss"].append(stats["inner_loss"])
                rate = inner_per_step / max(time.perf_counter() - t0, 1e-9)
                if main and (self.step % cfg.log_every == 0 or self.step == cfg.outer_steps):
                    for key, value in (*stats.items(), ("meta_grad_norm", norm), ("inner_steps_per_s", rate)):
                        writer.add_scalar(f"meta_train/{key}", value, self.step)
                    for key, value in self.counters.items():
                        writer.add_scalar(f"meta_train/{key}_total", value, self.step)
                if self.validator and self.step % cfg.validate_every == 0:
                    self._validate(writer)
                bar.update(1)
                best = self.best_validation()
                valid = {"valid": f"{best['score']:.3f}@{best['step']}"} if best else {}
                bar.set_postfix(meta_loss=f"{stats['meta_loss']:.3f}", grad=f"{norm:.2g}", **valid)
                if self.step % cfg.checkpoint_every == 0:
                    self.save()
                    saved_at = self.step
        finally:
            bar.close()
            if writer is not None:
                writer.close()
        if saved_at != self.step:
            self.save()
        elapsed = time.perf_counter() - start
        done = self.step - started_at
        return {
            "checkpoint": str(self.out / CHECKPOINT),
            "outer_steps": self.step,
            "seconds": elapsed,
            "inner_steps_per_s": inner_per_step * done / elapsed if done and elapsed > 0 else 0.0,
            "final_meta_loss": self.history["meta_loss"][-1] if self.history["meta_loss"] else None,
            **self.counters,
        }


def _rng_state(device: torch.device) -> Dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: Dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


def _to_cpu(tree):
    if isinstance(tree, torch.Tensor):
        return tree.detach().cpu()
    if isinstance(tree, dict):
        return {k: _to_cpu(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_to_cpu(v) for v in tree)
    return tree


def meta_train(config: Config, out_dir, resume: bool = False, overwrite: bool = False, progress: bool = True) -> Dict:
    """Run (or resume) a meta-training job and return its summary (under torchrun: on every rank)."""
    return MetaTrainer(config, out_dir, resume=resume, overwrite=overwrite, progress=progress).train()
