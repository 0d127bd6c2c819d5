"""Package layout that pyproject.toml cannot express: the shipped checkpoints (and their cards) stay in
the top-level `checkpoints/` directory, where they are browsed and linked, and install as the
data-only subpackage `l2o.shipped`, so every file added there ships without touching this file.
Everything else (metadata, dependencies, package data patterns) is in pyproject.toml."""

from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["l2o", "l2o.*"]) + ["l2o.shipped"],
    package_dir={"l2o.shipped": "checkpoints"},
)
