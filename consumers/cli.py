"""`ledger consume`: run a consumer job until stopped, or until idle."""

from __future__ import annotations

import asyncio
import os
import re
import socket
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from consumers.job import ConsumerJob
from ledger.cli_run import param_option, parse_params
from ledger.cli_support import console, location_of, print_json
from ledger.errors import InputError
from ledger.loader import load_job

__all__ = ["consume"]

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"


def _params(
    job: ConsumerJob, pairs: tuple[str, ...], bootstrap_servers: str = ""
) -> dict[str, Any]:
    """The job's parameters with `--param` values, plus the policies in
    force, so that the run records what it ran with."""
    from ledger.inputs import convert_param

    params: dict[str, Any] = dict(job.parameters)
    for name, text in parse_params(pairs).items():
        if name not in job.parameters:
            known = ", ".join(sorted(job.parameters)) or "none"
            raise InputError(
                f"--param {name}", "unknown parameter", f"use one of: {known}"
            )
        params[name] = convert_param(name, text, job.parameters[name])
    params.update(
        batch_max_records=job.batch_max_records,
        batch_max_seconds=job.batch_max_seconds,
        retry_attempts=job.retry.attempts,
        max_crashes=job.quarantine.max_crashes,
    )

    # Where the broker was, so that `ledger explain` can name the command
    # that resumes; not part of the run's identity.
    if bootstrap_servers:
        params["bootstrap_servers"] = bootstrap_servers
    return params


# What Kafka accepts as a topic name.
_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,249}")


def _check_job(job: ConsumerJob, job_ref: str) -> None:
    """A consumer job's settings, checked before anything is recorded."""
    problems = []
    group = getattr(job, "group_id", "")
    if not isinstance(group, str) or not group or ":" in group:
        problems.append("group_id must be set and hold no ':'")
    topics = getattr(job, "topics", ())
    if isinstance(topics, str) or not isinstance(topics, tuple | list) or not topics:
        problems.append("topics must be a tuple of topic names, such as ('orders',)")
    else:
        bad = [t for t in topics if not isinstance(t, str) or not _TOPIC.fullmatch(t)]
        if bad:
            problems.append(
                f"topics {bad!r} are not Kafka topic names (letters, digits, "
                "'.', '_' and '-', at most 249)"
            )
    records, seconds = job.batch_max_records, job.batch_max_seconds
    if not isinstance(records, int) or isinstance(records, bool) or records < 1:
        problems.append("batch_max_records must be a whole number, 1 or more")
    if not isinstance(seconds, int | float) or not 0 < seconds < 3600:
        problems.append("batch_max_seconds must be a number of seconds in (0, 3600)")
    if job.auto_offset_reset not in ("earliest", "latest"):
        problems.append("auto_offset_reset must be 'earliest' or 'latest'")
    if problems:
        raise InputError(job_ref, "; ".join(problems), f"fix {type(job).__name__}")


@click.command()
@click.argument("job_ref", metavar="JOB_FILE_OR_MODULE")
@click.option(
    "--bootstrap-servers",
    envvar="KAFKA_BOOTSTRAP_SERVERS",
    show_envvar=True,
    default=DEFAULT_BOOTSTRAP,
    show_default=True,
    help="Kafka brokers, host:port[,host:port] (scripts/kafka.sh's broker "
    "is 127.0.0.1:19092).",
)
@click.option(
    "--member",
    default=None,
    help="This consumer's name in its group, stable across restarts, so a "
    "restart resumes its run (default: the host name).",
)
@click.option(
    "--until-idle",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    metavar="SECONDS",
    help="Stop cleanly once the group has read every partition of its topics "
    "to the end and nothing arrived for this long.",
)
@param_option
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.pass_context
def consume(
    ctx: click.Context,
    job_ref: str,
    bootstrap_servers: str,
    member: str | None,
    until_idle: float | None,
    param_pairs: tuple[str, ...],
    as_json: bool,
) -> None:
    """Consume a consumer job's topics, checkpointing through the ledger.

    Stops cleanly on SIGTERM or SIGINT (and with --until-idle); a restart
    of the same --member resumes where the ledger says.
    """
    from consumers.consumer import LedgerConsumer
    from consumers.recorder import ConsumerRecorder
    from ledger.store import opened
    from projections.access import catch_up_quietly

    _check_bootstrap(bootstrap_servers)
    if member is not None and not member.strip():
        raise InputError("--member ''", "is empty", "name the member, or leave it out")
    job = load_job(job_ref, ConsumerJob)  # type: ignore[type-abstract]
    _check_job(job, job_ref)
    params = _params(job, param_pairs, bootstrap_servers)
    member = member or socket.gethostname()
    if Path(job_ref).is_file():
        job_ref = str(Path(job_ref).resolve())

    location = location_of(ctx)
    with opened(location) as ledger:
        recorder = ConsumerRecorder(ledger, job, job_ref, member, params)
        consumer = LedgerConsumer(
            recorder,
            job,
            bootstrap_servers=bootstrap_servers,
            until_idle=until_idle,
            kafka_options=_kafka_options(),
        )
        summary = asyncio.run(consumer.run())
    catch_up_quietly(location)

    if as_json:
        print_json(summary.__dict__)
        return
    table = Table(title=job.name, show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("run", summary.run_id)
    table.add_row("attempt", str(summary.attempt))
    table.add_row("messages", f"{summary.messages:,}")
    table.add_row("batches", f"{summary.batches:,}")
    table.add_row("quarantined", f"{summary.quarantined:,}")
    table.add_row("superseded partitions", f"{summary.superseded:,}")
    for item in summary.divergences:
        table.add_row(
            f"diverged {item['partition']}",
            f"kafka {item['kafka']} {item['divergence']} ledger {item['ledger']}",
        )
    table.add_row("elapsed", f"{summary.elapsed:.1f} s")
    console().print(table)


def _check_bootstrap(servers: str) -> None:
    """host:port[,host:port], each port a number Kafka could listen on."""
    for server in servers.split(","):
        host, sep, port = server.strip().rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise InputError(
                f"--bootstrap-servers {servers}",
                f"{server.strip()!r} is not host:port",
                "write host:port[,host:port], such as 127.0.0.1:19092",
            )


def _kafka_options() -> dict[str, Any]:
    """Group timing from the environment, for tests and slow networks."""
    options: dict[str, Any] = {}
    for name in ("session_timeout_ms", "heartbeat_interval_ms", "max_poll_interval_ms"):
        value = os.environ.get(f"LEDGER_KAFKA_{name.upper()}")
        if value:
            options[name] = int(value)
    return options
