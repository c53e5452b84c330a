"""The effect registry: what a handler calls to make a side effect safely.

A job declares its effects and whether each downstream honours
idempotency keys; its handlers then make every outside write through
`context.effect(name, record, call)`. The registry derives the effect's
key (`ledger.keys`), records the intent in the ledger before `call(key)`
runs, and records the outcome after, so that a replay knows what was done:

- a completed effect is not called again: its recorded result is returned;
- an effect whose intent was recorded but whose outcome was not (the
  worker died in between) is called again with the same key when the
  downstream honours keys, and counted as repeated after a crash;
  otherwise it is held as uncertain: the record is quarantined and an
  operator decides, once, whether it happened (`ledger effects confirm`)
  or not (`ledger effects retry`);
- a call that raised is called again next time; when it cannot tell
  whether the downstream applied it, it raises `EffectOutcomeUnknown`, and
  a downstream without keys holds the effect as uncertain.

Cost: one ledger transaction for each intent, which must be durable before
the call. An outcome on a downstream without keys is recorded at once,
since losing it makes the effect uncertain; on a downstream that honours
keys, outcomes are kept in memory and recorded together before the batch's
checkpoint, since losing them only repeats calls the downstream drops.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar
from uuid import UUID

import orjson
import structlog
from eventsourcing.persistence import IntegrityError

from ledger import faults
from ledger.effect import (
    AFTER_CRASH,
    AFTER_FAILURE,
    AFTER_RELEASE,
    AFTER_UNKNOWN,
    COMPLETED,
    FAILED,
    INTENDED,
    RELEASED,
    UNCERTAIN,
    Effect,
)
from ledger.errors import LedgerError
from ledger.job import Reject
from ledger.keys import EffectSite, idempotency_key, record_identity
from ledger.redaction import in_force
from ledger.store import Ledger

__all__ = [
    "EffectKeyReused",
    "EffectOutcomeUnknown",
    "EffectPolicy",
    "EffectRegistry",
    "EffectUncertain",
    "EffectUndeclared",
    "EffectsFor",
    "promotion_effects",
]

log = structlog.get_logger(__name__)

_T = TypeVar("_T")

# A result is returned on replay in place of the call; a larger one is not
# kept, and a replay then returns None.
RESULT_MAX_BYTES = 4096

# Outcomes kept in memory before they are recorded anyway.
PENDING_MAX = 1000

# The name a record's own key is derived under (`record_key`); an effect
# may not be declared with it.
RECORD_KEY_NAME = ""


@dataclass(frozen=True)
class EffectPolicy:
    """How a job's effect behaves downstream.

    `honours_keys`: the downstream applies a call at most once per
    idempotency key (it keeps the keys it has seen). Only then may the
    ledger call it again when it cannot know whether an earlier call landed.
    """

    honours_keys: bool
    description: str = ""


class EffectUndeclared(LedgerError):
    """A handler named an effect its job does not declare."""


class EffectKeyReused(LedgerError):
    """One effect made twice for one record with the same `part`."""

    def __init__(self, name: str, record: tuple[str | int, ...], part: str) -> None:
        where = " ".join(str(item) for item in record)
        super().__init__(
            f"effect {name} was made twice for {where}"
            + (f" with part {part!r}" if part else "")
            + ": both calls would share one idempotency key, and the second "
            "would be taken for the first; pass a different `part` to each "
            "(context.effect(name, record, call, part=...))"
        )


class EffectOutcomeUnknown(Exception):
    """Raised by an effect's call when it cannot tell whether the downstream
    applied it (a timeout after sending). Any other exception means that
    the downstream did not apply it."""


class EffectUncertain(Reject):
    """The effect may or may not have happened, and its downstream does not
    honour keys: the record waits in quarantine for an operator's decision."""

    def __init__(self, key: UUID, name: str, why: str, payload: Any = None) -> None:
        super().__init__(
            "effect-uncertain",
            f"effect {name} ({key}) {why}; check the downstream, then "
            f"`ledger effects confirm {key}` or `ledger effects retry {key}`",
            payload,
        )
        self.key = key


class EffectRegistry:
    """One worker's effects: see the module docstring.

    The runtime binds it to the worker's attempt and tells it the step being
    worked; until bound, a handler that makes an effect is refused.
    """

    def __init__(
        self,
        ledger: Ledger,
        run_id: UUID,
        declared: Mapping[str, EffectPolicy],
        site: Callable[[str], EffectSite],
    ) -> None:
        self.ledger = ledger
        self.run_id = run_id
        self.declared = dict(declared)
        self._site = site
        self.step = ""
        self.attempt = 0
        self.actor = ""
        self._holds: Callable[[], None] | None = None

        # Effects that completed in this process, by key: their outcome may
        # still wait in `_pending`, so the store alone cannot say.
        self._done: dict[UUID, Any] = {}
        self._pending: dict[UUID, Effect] = {}

        # What this process did, for the run's summary: `called` (calls
        # started, repeats included), `repeated_after_crash`, `replayed`
        # (done before: the recorded result returned, no call), `uncertain`
        # (held for a decision) and `events` (effect events it stored).
        self.tally: Counter[str] = Counter()

        # The keys made since the runtime last said a record (or a batch's
        # write) began.
        self._this_record: set[UUID] = set()

    def bind(self, attempt: int, actor: str, holds: Callable[[], None]) -> None:
        """From now on effects are made for `attempt`; `holds()` raises when
        the worker's lease is no longer its own."""
        self.attempt = attempt
        self.actor = actor
        self._holds = holds

    def at(self, step: str) -> None:
        """The step whose records are handled from now on."""
        self.step = step
        self._this_record.clear()

    def begin_record(self) -> None:
        """A handler call (or a batch's write) begins: each effect may be
        made once per record in it."""
        self._this_record.clear()

    def record_key(self, record: Any) -> UUID:
        """The record's own key, for an output keyed by record (an upsert's
        id): derived as an effect's is, under a name no effect can have."""
        return self._key(RECORD_KEY_NAME, record, "")

    def key(self, name: str, record: Any, part: str = "") -> UUID:
        """The idempotency key of effect `name` for `record`."""
        self._policy(name)
        return self._key(name, record, part)

    def _key(self, name: str, record: Any, part: str) -> UUID:
        return idempotency_key(
            self._site(self.step), record_identity(record), name, part
        )

    def call(
        self, name: str, record: Any, call: Callable[[str], _T], part: str = ""
    ) -> _T:
        """Makes effect `name` for `record` once: `call(key)` runs unless the
        ledger knows it already happened. Returns the call's result, or the
        recorded one on replay."""
        policy = self._policy(name)
        key = self._key(name, record, part)

        # Two calls of one effect for one record need parts to tell them
        # apart; a handler tried again (a consumer's retry) starts afresh.
        if key in self._this_record:
            raise EffectKeyReused(name, record_identity(record), part)
        self._this_record.add(key)
        if key in self._done:
            return self._done[key]  # type: ignore[no-any-return]
        if self._holds is None:
            raise EffectUndeclared(
                f"effect {name} was made outside a run's work; make effects "
                "from a step's handle or write, or a consumer's handle or write"
            )
        self._holds()

        # The intent is durable before the downstream hears of it.
        effect = self._intend(key, name, record, part, policy)
        if effect.state == COMPLETED:
            self.tally["replayed"] += 1
            return effect.result  # type: ignore[no-any-return]
        self.tally["called"] += 1
        faults.hit("after_intent")

        try:
            result = call(str(key))
        except EffectOutcomeUnknown as error:
            self._record_failure(effect, error, outcome_known=False)
            if policy.honours_keys:
                raise
            self.tally["uncertain"] += 1
            raise EffectUncertain(
                key, name, f"may have happened ({error})", _data(record)
            ) from error
        except Exception as error:
            self._record_failure(effect, error, outcome_known=True)
            raise
        faults.hit("after_effect")

        self._record_result(effect, policy, result)
        return result

    def flush(self) -> None:
        """Records the outcomes still held in memory, in one transaction.

        From then on the store knows every outcome this process saw, so the
        memory of them is let go: a long-running consumer's registry does
        not grow with the effects it made."""
        pending = list(self._pending.values())
        if pending:
            try:
                self._save(*pending)
            except IntegrityError:
                # Another process appended to one of them (an operator, a
                # late worker): record each on top of what the store holds.
                for effect in pending:
                    self._save_outcome_again(effect)
        self._pending.clear()
        self._done.clear()

    def pending_outcomes(self) -> int:
        """How many effects' outcomes this registry holds in memory."""
        return len(self._done)

    def flush_quietly(self) -> None:
        """`flush` on the way out of a failure, which it must not hide: an
        outcome it cannot record makes the effect repeat, never vanish."""
        try:
            self.flush()
        except Exception as error:
            log.warning(
                "effect.outcomes_not_recorded",
                run_id=str(self.run_id),
                count=len(self._pending),
                error=str(error).splitlines()[0] if str(error) else repr(error),
            )
            self._pending.clear()
            self._done.clear()

    def _save(self, *effects: Effect) -> None:
        """Saves in one transaction, counting the events for the summary."""
        count = sum(len(effect.pending_events) for effect in effects)
        self.ledger.save(*effects)
        self.tally["events"] += count

    def _policy(self, name: str) -> EffectPolicy:
        if name == RECORD_KEY_NAME:
            raise EffectUndeclared(
                "an effect needs a name: declare it in the job's `effects` "
                "and pass that name"
            )
        try:
            return self.declared[name]
        except KeyError:
            known = ", ".join(sorted(self.declared)) or "none"
            raise EffectUndeclared(
                f"effect {name!r} is not declared by the job (declared: {known}); "
                f"add it to the job's `effects` with EffectPolicy(honours_keys=...)"
            ) from None

    def _intend(
        self, key: UUID, name: str, record: Any, part: str, policy: EffectPolicy
    ) -> Effect:
        """The effect, its intent (or repeat) recorded; or, when the ledger
        says it happened already, the completed effect with its result."""
        effect = Effect.intend(
            key,
            run_id=self.run_id,
            name=name,
            step=self.step,
            record=list(record_identity(record)),
            part=part,
            honours_keys=policy.honours_keys,
            attempt=self.attempt,
            actor=self.actor,
        )
        try:
            self._save(effect)
            return effect
        except IntegrityError:
            pass

        # Made before: by an attempt that died, failed or finished it.
        stored: Effect = self.ledger.repository.get(key)
        if stored.state == COMPLETED:
            self._done[key] = stored.result
            return stored
        if stored.state == UNCERTAIN:
            self.tally["uncertain"] += 1
            raise EffectUncertain(
                key, name, "waits for an operator's decision", _data(record)
            )
        # A repeat needs a downstream that honours keys, as declared both
        # when the effect was first made and now: a job may learn late that
        # its downstream does not.
        honours = stored.honours_keys and policy.honours_keys
        unknown = stored.state == FAILED and not stored.outcome_known
        if (stored.state == INTENDED or unknown) and not honours:
            why = (
                "its last call could not tell whether it landed"
                if unknown
                else "no outcome was recorded: the worker that called it "
                "stopped before it could record one"
            )
            stored.hold(self.run_id, self.attempt, self.actor, why)
            self._save(stored)
            self.tally["uncertain"] += 1
            log.warning(
                "effect.uncertain", key=str(key), effect=name, run_id=str(self.run_id)
            )
            raise EffectUncertain(
                key, name, "may have happened before a crash", _data(record)
            )

        after = {
            INTENDED: AFTER_CRASH,
            FAILED: AFTER_FAILURE if stored.outcome_known else AFTER_UNKNOWN,
            RELEASED: AFTER_RELEASE,
        }[stored.state]
        stored.repeat(self.run_id, self.attempt, self.actor, after)
        self._save(stored)
        if after == AFTER_CRASH:
            self.tally["repeated_after_crash"] += 1
        log.info(
            "effect.repeated",
            key=str(key),
            effect=name,
            after=after,
            run_id=str(self.run_id),
            attempt=self.attempt,
        )
        return stored

    def _record_result(self, effect: Effect, policy: EffectPolicy, result: Any) -> None:
        kept, recorded, why = _keepable(result)
        effect.complete(self.run_id, self.attempt, self.actor, recorded, kept)
        if not kept:
            log.warning(
                "effect.result_not_kept",
                key=str(effect.id),
                effect=effect.name,
                why=why,
            )
        self._done[effect.id] = result
        if policy.honours_keys:
            self._pending[effect.id] = effect
            if len(self._pending) >= PENDING_MAX:
                self.flush()
            return
        try:
            self._save(effect)
        except IntegrityError:
            self._save_outcome_again(effect)

    def _record_failure(
        self, effect: Effect, error: BaseException, *, outcome_known: bool
    ) -> None:
        # Redacted whole, then cut: half a secret matches no pattern.
        effect.fail(
            self.run_id,
            self.attempt,
            self.actor,
            error,
            outcome_known=outcome_known,
            message=in_force().redact_text(str(error)),
        )
        self._save(effect)

    def _save_outcome_again(self, effect: Effect) -> None:
        stored: Effect = self.ledger.repository.get(effect.id)
        if stored.state == COMPLETED:
            return
        stored.complete(
            self.run_id, self.attempt, self.actor, effect.result, effect.result_kept
        )
        try:
            self._save(stored)
        except IntegrityError:
            log.warning("effect.outcome_not_recorded", key=str(effect.id))


# Builds the registry of a job's effects at a site; handed to the code that
# opens a job outside a worker's attempt (a promotion).
EffectsFor = Callable[
    [Mapping[str, EffectPolicy], Callable[[str], EffectSite]], EffectRegistry
]


def promotion_effects(ledger: Ledger, run_id: UUID, by: str) -> EffectsFor:
    """Registries for an operator's promotion: effects are made outside any
    attempt (attempt 0), in the operator's name."""

    def effects_for(
        declared: Mapping[str, EffectPolicy], site: Callable[[str], EffectSite]
    ) -> EffectRegistry:
        registry = EffectRegistry(ledger, run_id, declared, site)
        registry.bind(0, f"promotion by {by}", lambda: None)
        return registry

    return effects_for


def _data(record: Any) -> Any:
    """What a quarantine keeps of the record: a file record's data; a
    consumer keeps its own preview of a message."""
    return getattr(record, "data", None)


def _keepable(result: Any) -> tuple[bool, Any, str]:
    """Whether the result can be kept for replays, what is recorded, and
    why not. A result that holds what the policy in force redacts is not
    kept: a replay given a redacted result would act on a wrong value."""
    try:
        encoded = orjson.dumps(result)
    except TypeError:
        return False, None, "not JSON"
    if len(encoded) > RESULT_MAX_BYTES:
        return False, None, f"larger than {RESULT_MAX_BYTES} bytes"
    if in_force().redact(result) != result:
        return False, None, "it holds what the redaction policy removes"
    return True, result, ""
