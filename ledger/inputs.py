"""What a run reads and how it is parameterised: the input version.

An input version is the identity of a run: the input file's content digest,
the job's declared version, and every parameter. The same command on the
same input version finds and resumes the same run.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import orjson

from ledger.errors import InputError
from ledger.job import InputVersion, Job

__all__ = [
    "GUARD_PARAMETERS",
    "RUNTIME_PARAMETERS",
    "convert_param",
    "describe_input",
    "input_key",
    "resolve_params",
]

# Parameters every job has, next to its own.
RUNTIME_PARAMETERS: dict[str, Any] = {
    "batch_size": 5000,
    # A batch that rejects more than this share of its records fails its
    # step instead of quarantining them: that many rejects means the wrong
    # file or a broken rule, not bad records.
    "max_quarantine_ratio": 0.2,
}

# Guards steer how a run may proceed, not what it computes: changing one
# (say, to accept more rejects after a review) resumes the same run.
GUARD_PARAMETERS = frozenset({"max_quarantine_ratio"})


def resolve_params(job: Job, overrides: dict[str, str]) -> dict[str, Any]:
    """The run's parameters: defaults, with `--param` values converted."""
    params = {**RUNTIME_PARAMETERS, **job.parameters}
    for name, text in overrides.items():
        if name not in params:
            known = ", ".join(sorted(params))
            raise InputError(
                f"--param {name}", "unknown parameter", f"use one of: {known}"
            )
        params[name] = convert_param(name, text, params[name])

    # Paths are recorded absolute: a resume from another directory must
    # reopen the same files, never new ones next to it.
    for name in job.path_parameters:
        value = str(params.get(name) or "")
        if ":memory:" in value or "mode=memory" in value:
            raise InputError(
                f"--param {name}={value}",
                "names an in-memory database, lost when the process ends",
                "name a file",
            )
        if value:
            params[name] = str(Path(value).expanduser().resolve())
    if int(params["batch_size"]) < 1:
        raise InputError("--batch-size", "must be at least 1", "pass a positive size")
    if not 0 <= float(params["max_quarantine_ratio"]) <= 1:
        raise InputError(
            "--param max_quarantine_ratio",
            "must be between 0 and 1",
            "pass a share such as 0.2",
        )
    return params


def convert_param(name: str, text: str, default: Any) -> Any:
    try:
        if isinstance(default, bool):
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(text)
            return text.lower() in ("true", "1", "yes")
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float):
            return float(text)
    except ValueError:
        raise InputError(
            f"--param {name}={text}",
            f"not a valid {type(default).__name__}",
            f"pass a {type(default).__name__} like {default!r}",
        ) from None
    return text


def describe_input(path: Path) -> InputVersion:
    """Names an input by size and content digest, reading it once."""
    if not path.exists():
        raise InputError(str(path), "no such file", "check the --input path")
    if not path.is_file():
        raise InputError(str(path), "not a regular file", "pass a file, not a folder")
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return InputVersion(
        name=path.name,
        path=str(path.resolve()),
        size=path.stat().st_size,
        sha256=digest.hexdigest(),
    )


def input_key(job: Job, source: InputVersion, params: dict[str, Any]) -> str:
    """The input version's identity: job, code version, content, parameters."""
    canonical = orjson.dumps(
        {
            "job": job.name,
            "version": job.version,
            "sha256": source.sha256,
            "params": {
                name: value
                for name, value in params.items()
                if name not in GUARD_PARAMETERS
            },
        },
        option=orjson.OPT_SORT_KEYS,
    )
    return hashlib.sha256(canonical).hexdigest()
