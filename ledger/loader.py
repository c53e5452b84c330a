"""Loading a job from a file path or an importable module name."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any, TypeVar, overload

from ledger.errors import JobLoadError
from ledger.job import Job

__all__ = ["load_job"]


_J = TypeVar("_J")


@overload
def load_job(ref: str) -> Job: ...


@overload
def load_job(ref: str, kind: type[_J]) -> _J: ...


def load_job(ref: str, kind: type[Any] = Job) -> Any:
    """Returns the `job` object defined by a job file or module.

    `kind` is the class it must be an instance of: a `ledger.Job` for
    `ledger run`, a `consumers.ConsumerJob` for `ledger consume`.
    """
    path = Path(ref)

    # A file: load it under a name of its own, so two job files named alike
    # do not replace each other in sys.modules.
    if ref.endswith(".py") or path.exists():
        if not path.is_file():
            raise JobLoadError(
                f"job file {ref} does not exist; pass the path of a .py file "
                "that defines `job`, or an importable module name"
            )
        digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
        name = f"_ledger_job_{path.stem}_{digest}"
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise JobLoadError(f"cannot load {ref} as Python; is it a .py file?")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as error:
            raise JobLoadError(
                f"job file {ref} failed to load: {type(error).__name__}: {error}"
            ) from error
    else:
        try:
            module = importlib.import_module(ref)
        except ImportError as error:
            raise JobLoadError(
                f"cannot import job module {ref}: {error}; pass a .py file path "
                "or a module on PYTHONPATH"
            ) from error

    job = getattr(module, "job", None)
    if not isinstance(job, kind):
        raise JobLoadError(
            f"{ref} defines no `job` of the right kind; add `job = YourJob()` "
            f"where YourJob subclasses {kind.__module__.split('.')[0]}."
            f"{kind.__name__}"
        )
    return job
