"""Aliases of a model name (`champion`, `candidate`, any user alias): promote, rollback, state at a time.

An alias points at one version; moves are append-only events in the store (`Store.move_alias`), so
rollback is "move the alias back" (as MLflow's registry does with aliases instead of stages) and any
past state can be shown (`state_at`). Promoting checks the version's files and its last gate
verdict: a version whose last gate did not pass needs `force`, which is recorded with the move.
"""

from __future__ import annotations

from datetime import datetime, timezone

from prefloop.registry import RegistryError
from prefloop.registry.versions import check_alias, check_files, label, last_gate, resolve
from prefloop.store import Store, StoreError, alias_stack

CHAMPION = "champion"


def promote(store: Store, ref: str, name: str | None = None, alias: str = CHAMPION, force: bool = False,
            note: str | None = None) -> dict:
    """Point `alias` at the version `ref` names; returns {"version", "previous", "forced", "gate", "unchanged"}.

    Promoting the version the alias already points to changes nothing and is no error ("unchanged": True,
    as MLflow's set_registered_model_alias), so a retried promote succeeds. Raises RegistryError when the
    files are gone, when the alias name is not allowed, when the last gate verdict is not "pass" and `force`
    is not given, or when another process moved the alias meanwhile (nothing is written then)."""
    version = resolve(store, ref, name)
    check_files(version)
    current = store.aliases(version["name"]).get(alias)
    if current == version["id"]:
        return {"version": version, "previous": None, "forced": False, "gate": None, "unchanged": True}
    check_alias(store, version["name"], alias)
    gate = last_gate(store, version)
    verdict = gate["note"] if gate else None
    forced = False
    if verdict not in (None, "pass"):
        if not force:
            raise RegistryError(f"{label(version)}: its last gate verdict is {verdict!r} ({gate['created_at']}): "
                                f"{gate['detail'].get('reason', '')}. Fix it and run the gate again, or promote "
                                "with --force (recorded in the history)")
        forced = True
    text = note or (f"gate {verdict}" if verdict else "no gate verdict")
    try:
        moved = store.move_alias(version["name"], alias, "set", version["id"], note=text, forced=forced,
                                 expect_version_id=current)
    except StoreError as err:
        raise RegistryError(str(err)) from err
    return {"version": version, "previous": store.model_version(moved["previous_id"]) if moved["previous_id"] else None,
            "forced": forced, "gate": verdict, "unchanged": False}


def rollback(store: Store, name: str, alias: str = CHAMPION, note: str | None = None) -> dict:
    """Move `alias` back to the version it pointed to before its current move; returns {"version", "previous"}.
    The version it goes back to must still have its files."""
    ids = alias_stack(store.alias_events(name, alias))
    current = ids[-1] if ids else None
    if len(ids) < 2:
        raise RegistryError(f"{name}@{alias} has no previous version to roll back to"
                            + ("" if ids else " (it was never set; promote a version first)"))
    check_files(store.model_version(ids[-2]))
    try:
        moved = store.move_alias(name, alias, "rollback", note=note or "rollback", expect_version_id=current)
    except StoreError as err:
        raise RegistryError(str(err)) from err
    return {"version": store.model_version(moved["version_id"]), "previous": store.model_version(moved["previous_id"])}


def parse_time(text: str) -> str:
    """A user's time (ISO-8601; no zone = UTC; a date alone = its end) as the store's UTC timestamp text."""
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError as err:
        raise RegistryError(f"--at {text!r} is not an ISO-8601 time; give e.g. 2026-11-30T18:05:00 (UTC) or "
                            "2026-11-30T19:05:00+01:00") from err
    if len(text.strip()) == 10:  # a date: the whole day
        when = when.replace(hour=23, minute=59, second=59, microsecond=999999)
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.astimezone(timezone.utc).isoformat(timespec="microseconds")
