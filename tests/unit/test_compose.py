"""compose.yaml: valid Compose, and wired the way the ledger needs.

The file is first checked against the Compose Specification's own JSON
Schema, vendored in tests/compose/ (its README says where it came from),
and broken copies are checked to fail, so the check can fail. Then comes
what no schema knows: every service is health-checked or waits on healthy
services, LEDGER_URL parses with the ledger's own parser, passwords come
from the environment, checkpoints and outputs sit on different volumes, and
the image is built from this repository by the Dockerfile beside it.
"""

from __future__ import annotations

import copy
import json
import re
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import REPO
from jsonschema import Draft7Validator, Draft201909Validator, Draft202012Validator
from jsonschema.exceptions import ValidationError
from jsonschema.protocols import Validator

from ledger.config import parse_ledger_url

COMPOSE_FILE = REPO / "compose.yaml"
SCHEMA_FILE = REPO / "tests" / "compose" / "compose-spec.json"

# The services that run the `ledger` command, and whom each must wait for.
LEDGER_SERVICES = ("ledger-projector", "ledger-consumer")
WAITS_ON = {
    "ledger-projector": {"postgres"},
    "ledger-consumer": {"postgres", "kafka"},
}

# Drafts by the address a schema declares, without scheme or fragment.
# jsonschema's own lookup knows only the exact addresses it ships
# ("http://...schema#"); the Compose schema writes "https://...schema", which
# it would not recognise and would validate as the newest draft instead, with
# only a warning.
DRAFTS: dict[str, type[Validator]] = {
    "json-schema.org/draft-07/schema": Draft7Validator,
    "json-schema.org/draft/2019-09/schema": Draft201909Validator,
    "json-schema.org/draft/2020-12/schema": Draft202012Validator,
}

# Compose interpolation with an optional default: ${VAR}, ${VAR:-default}
# and ${VAR-default}. Other forms (${VAR:?error}, nesting) are left in place
# and refused by `with_defaults`.
INTERPOLATION = re.compile(
    r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::?-(?P<default>[^${}]*))?\}"
)

Document = dict[str, Any]


@pytest.fixture(scope="module")
def compose() -> Document:
    document = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(document, dict), "compose.yaml must hold a mapping"
    return document


@pytest.fixture(scope="module")
def validator() -> Validator:
    schema = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    declared = str(schema.get("$schema", ""))
    draft = DRAFTS.get(declared.split("://", 1)[-1].rstrip("#"))
    if draft is None:
        pytest.fail(
            f"{SCHEMA_FILE.name} declares $schema {declared!r}, a draft this test "
            "does not know: add it to DRAFTS"
        )
    draft.check_schema(schema)
    return draft(schema)


def schema_errors(validator: Validator, document: Document) -> list[ValidationError]:
    return sorted(validator.iter_errors(document), key=lambda e: list(e.path))


def describe(errors: list[ValidationError]) -> str:
    return "\n".join(f"{error.json_path}: {error.message}" for error in errors)


def with_defaults(text: str) -> str:
    """The value Compose gives `text` when none of its variables is set."""

    def default(match: re.Match[str]) -> str:
        if match["default"] is None:
            pytest.fail(f"{match[0]} has no default; write ${{NAME:-default}}")
        return match["default"]

    # `$$` is Compose's escape for a literal dollar: keep it out of the way.
    value = INTERPOLATION.sub(default, text.replace("$$", "\0"))
    if "$" in value:
        pytest.fail(f"{text!r} uses interpolation this test cannot resolve")
    return value.replace("\0", "$")


def environment(service: Document) -> dict[str, str]:
    """A service's environment, from either the mapping or the list form."""
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.partition("=")[::2] for item in raw)
    return {key: str(value) for key, value in raw.items()}


def command(service: Document) -> list[str]:
    raw = service.get("command") or []
    return raw.split() if isinstance(raw, str) else list(raw)


def has_healthcheck(service: Document) -> bool:
    check = service.get("healthcheck") or {}
    test = check.get("test")
    return bool(test) and not check.get("disable") and test != ["NONE"]


def named_volumes(service: Document) -> set[str]:
    """The named volumes a service mounts (bind mounts and tmpfs left out)."""
    names = set()
    for mount in service.get("volumes", []):
        if isinstance(mount, str):
            source, sep, _ = mount.partition(":")
            if sep and not source.startswith((".", "/", "~", "$")):
                names.add(source)
        elif mount.get("type") == "volume" and mount.get("source"):
            names.add(mount["source"])
    return names


def test_compose_file_matches_the_compose_specification(
    compose: Document, validator: Validator
) -> None:
    errors = schema_errors(validator, compose)
    assert not errors, "compose.yaml breaks the Compose schema:\n" + describe(errors)


def _interval_as_number(document: Document) -> None:
    document["services"]["postgres"]["healthcheck"]["interval"] = 5


def _unknown_top_level_key(document: Document) -> None:
    document["deployments"] = {}


def _misspelt_service_key(document: Document) -> None:
    kafka = document["services"]["kafka"]
    kafka["helthcheck"] = kafka.pop("healthcheck")


def _unknown_condition(document: Document) -> None:
    depends_on = document["services"]["ledger-consumer"]["depends_on"]
    depends_on["kafka"]["condition"] = "service_ready"


@pytest.mark.parametrize(
    ("break_it", "where"),
    [
        (_interval_as_number, ("services", "postgres", "healthcheck", "interval")),
        (_unknown_top_level_key, ()),
        (_misspelt_service_key, ("services", "kafka")),
        (_unknown_condition, ("services", "ledger-consumer", "depends_on")),
    ],
    ids=["interval-as-number", "unknown-top-level-key", "misspelt-key", "condition"],
)
def test_the_schema_check_rejects_a_broken_copy(
    compose: Document,
    validator: Validator,
    break_it: Callable[[Document], None],
    where: tuple[str, ...],
) -> None:
    broken = copy.deepcopy(compose)
    break_it(broken)

    # The error must be the one planted, where it was planted.
    errors = schema_errors(validator, broken)
    assert errors, "the schema accepted a broken copy: the check cannot fail"
    assert where in {tuple(error.absolute_path) for error in errors}, describe(errors)


def test_every_service_is_health_checked_or_waits_on_healthy_services(
    compose: Document,
) -> None:
    services: dict[str, Document] = compose["services"]
    checked = {name for name, service in services.items() if has_healthcheck(service)}
    problems = []
    for name, service in services.items():
        depends_on = service.get("depends_on") or {}
        if name not in checked and not depends_on:
            problems.append(f"{name}: neither a healthcheck nor depends_on")

        # The list form of depends_on waits only for a start, never for health.
        if not isinstance(depends_on, dict):
            problems.append(f"{name}: depends_on must name a condition per service")
            continue
        for other, how in depends_on.items():
            if how.get("condition") != "service_healthy":
                problems.append(f"{name}: waits on {other} without service_healthy")
            if other not in checked:
                problems.append(f"{name}: waits on {other}, which has no healthcheck")
    assert not problems, "\n".join(problems)


def test_services_are_wired_as_the_topology_describes(compose: Document) -> None:
    services: dict[str, Document] = compose["services"]

    # The stores, each with a healthcheck that asks the server itself.
    assert services["postgres"]["image"] == "postgres:16"
    assert "pg_isready" in services["postgres"]["healthcheck"]["test"]
    assert re.fullmatch(r"apache/kafka:4\.\d+\.\d+", services["kafka"]["image"])
    kafka_check = services["kafka"]["healthcheck"]["test"]
    assert "/opt/kafka/bin/kafka-topics.sh" in kafka_check
    assert "--list" in kafka_check

    # The ledger services: the `ledger` command, waiting on what they use.
    runs_ledger = {name for name, s in services.items() if command(s)[:1] == ["ledger"]}
    assert runs_ledger == set(LEDGER_SERVICES)
    for name, waits_on in WAITS_ON.items():
        assert set(services[name]["depends_on"]) == waits_on, name
        assert services[name]["restart"] == "unless-stopped", name
    projector = services["ledger-projector"]
    assert command(projector) == ["ledger", "project", "--follow"]
    assert projector["healthcheck"]["test"][1:] == ["ledger", "status"]
    consumer = command(services["ledger-consumer"])
    assert consumer[:2] == ["ledger", "consume"]
    assert consumer[consumer.index("--bootstrap-servers") + 1] == "kafka:9092"
    assert consumer[consumer.index("--member") + 1], "a stable member name"


@pytest.mark.parametrize("name", LEDGER_SERVICES)
def test_ledger_url_parses_with_the_ledgers_own_parser(
    compose: Document, name: str
) -> None:
    services: dict[str, Document] = compose["services"]
    url = environment(services[name])["LEDGER_URL"]
    location = parse_ledger_url(with_defaults(url))

    # It must reach the postgres service, as the user it creates.
    settings = environment(services["postgres"])
    postgres = {key: with_defaults(value) for key, value in settings.items()}
    assert location.is_postgres
    assert (location.host, location.port) == ("postgres", 5432)
    assert location.user == postgres["POSTGRES_USER"]
    assert location.password == postgres["POSTGRES_PASSWORD"]
    assert location.dbname == postgres["POSTGRES_DB"]


def test_passwords_come_from_the_environment(compose: Document) -> None:
    services: dict[str, Document] = compose["services"]
    password = environment(services["postgres"])["POSTGRES_PASSWORD"]
    match = INTERPOLATION.fullmatch(password)
    assert match, f"POSTGRES_PASSWORD is written into the file: {password!r}"

    # The URL must carry the same interpolation, so the two cannot drift.
    for name in LEDGER_SERVICES:
        url = environment(services[name])["LEDGER_URL"]
        userinfo = url.split("://", 1)[1].rsplit("@", 1)[0]
        assert userinfo.partition(":")[2] == password, name

    # And a comment must tell whoever deploys it to set the variable.
    comments = [
        line
        for line in COMPOSE_FILE.read_text(encoding="utf-8").splitlines()
        if line.lstrip().startswith("#")
    ]
    assert any(match["name"] in line for line in comments), match["name"]


def test_checkpoints_live_apart_from_outputs(compose: Document) -> None:
    services: dict[str, Document] = compose["services"]
    declared = set(compose.get("volumes") or {})
    checkpoints = named_volumes(services["postgres"])
    assert checkpoints, "postgres keeps its data on no named volume"
    assert named_volumes(services["kafka"]), "kafka keeps its log on no named volume"
    for name, service in services.items():
        assert named_volumes(service) <= declared, f"{name}: undeclared volume"
        if name in LEDGER_SERVICES:
            assert not named_volumes(service) & checkpoints, name


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined."""
    joined = re.sub(r"\\\n", " ", text)
    instructions = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, arguments = line.partition(" ")
            instructions.append((keyword.upper(), arguments.strip()))
    return instructions


def test_dockerfile_installs_the_project(compose: Document) -> None:
    services: dict[str, Document] = compose["services"]
    dockerfiles = set()
    for name in LEDGER_SERVICES:
        build = services[name]["build"]
        context = REPO / build["context"]
        dockerfiles.add((context / build.get("dockerfile", "Dockerfile")).resolve())
    assert dockerfiles == {REPO / "Dockerfile"}
    instructions = dockerfile_instructions((REPO / "Dockerfile").read_text())

    def arguments(keyword: str) -> list[str]:
        return [args for kw, args in instructions if kw == keyword]

    # The base, the install, and a user that is not root.
    assert arguments("FROM")[-1].startswith("python:3.11-slim")
    assert any(
        re.search(r"\bpip install (--?\S+ )*\.(\s|$)", run) for run in arguments("RUN")
    ), "no RUN installs the project with `pip install .`"
    assert arguments("USER"), "the image runs as root"
    assert arguments("USER")[-1].split(":")[0] not in ("root", "0")

    # What `pip install .` reads, and the consumer's job file, are copied.
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    packages = project["tool"]["setuptools"]["packages"]["find"]["include"]
    job_file = command(services["ledger-consumer"])[2]
    needed = {"pyproject.toml", project["project"]["readme"], Path(job_file).parts[0]}
    needed |= {package.rstrip("*") for package in packages}
    copied = set()
    for args in arguments("COPY"):
        sources = [part for part in args.split() if not part.startswith("--")][:-1]
        copied |= {Path(source).as_posix() for source in sources}
    missing = set() if "." in copied else needed - copied
    assert not missing, f"not copied into the image: {sorted(missing)}"
    assert all((REPO / source).exists() for source in copied), sorted(copied)
    assert (REPO / job_file).is_file(), job_file
