"""l2o: learned optimizers for PyTorch.

    import l2o
    opt = l2o.LearnedOptimizer(model.parameters(), checkpoint="runs/quickstart/checkpoint.safetensors")

Submodules: `optimizers` (architectures), `task_distributions`, `meta_train`, `checkpoints`, `evaluate`.
"""

__version__ = "0.1.0"

from l2o import checkpoints, optimizers  # noqa: E402
from l2o.errors import L2OError  # noqa: E402


def __getattr__(name):
    # The torch.optim adapters and heavier subpackages load on first use, keeping `import l2o` light.
    if name == "LearnedOptimizer":
        from l2o.torch_optim import LearnedOptimizer

        return LearnedOptimizer
    if name == "LODO":
        from l2o.torch_optim import LODO

        return LODO
    if name in ("task_distributions", "meta_train", "evaluate"):
        import importlib

        return importlib.import_module(f"l2o.{name}")
    raise AttributeError(f"module 'l2o' has no attribute {name!r}")


__all__ = ["LearnedOptimizer", "LODO", "L2OError", "checkpoints", "optimizers", "__version__"]
