"""`ledger quarantine sweep-keys`: destroy payload keys left behind.

A discard records its decision, then destroys the key of the record's
sealed payload; a crash in between leaves the key. A batch that sealed
its rejected records and then never committed leaves keys no event
names. The sweep destroys both; it is idempotent, and safe beside
running workers (keys younger than an hour that no event names yet are
left alone: their batch may still be committing).
"""

from __future__ import annotations

import click

from ledger.cli_support import location_of, print_json

__all__ = ["sweep_keys_cmd"]


@click.command("sweep-keys")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_context
def sweep_keys_cmd(ctx: click.Context, as_json: bool) -> None:
    """Destroy the payload keys of discarded records and unrecorded batches."""
    from ledger.sealed_payloads import sweep_payload_keys
    from ledger.store import opened

    with opened(location_of(ctx)) as ledger:
        swept = sweep_payload_keys(ledger)
    if as_json:
        print_json({"discarded": swept.discarded, "orphaned": swept.orphaned})
        return
    click.echo(
        f"payload keys destroyed: {swept.discarded:,} of discarded records, "
        f"{swept.orphaned:,} that no event names (batches that never committed)"
    )
