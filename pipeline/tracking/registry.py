"""The MLflow model registry kept in step with the Triton repository.

Registered model = the Triton model name. A pushed model is a version whose tag
`triton_version` names its directory in the repository; alias `champion` is what Triton serves,
`challenger` a blessed model the run did not push (drift held it, or push is off). The Triton
repository is the truth of what is served; the registry is the record of why. `hoh models list`
compares the two and flags any disagreement; rollback and promote change Triton first (one
atomic config replacement) and put it back if the registry cannot follow.
"""

from __future__ import annotations

import dataclasses
import datetime
import getpass
import json
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from hoh.config import HohConfig
from hoh.errors import UsageError
from hoh.pipeline.tracking import store
from hoh.pipeline.tracking.facts import RunFacts, metric_key
from hoh.pipeline.tracking.model_card import CARD_JSON, CARD_MD, build_card, render_markdown

TRITON_VERSION = "triton_version"  # the Triton version serving it now
TRITON_HISTORY = "triton_versions"  # every Triton version that held it (rollbacks re-publish)
STATE = "state"  # pushed | challenger
LIFECYCLE_LOG = "lifecycle.jsonl"


class RegistryMismatch(UsageError):
    """The registry and the Triton repository disagree in a way the command cannot repair."""


# --------------------------------------------------------------------------- registering


def _registered(mlflow_client, name: str):
    """The registered model, or None when it does not exist yet (any other error propagates:
    a registry that is down must not look empty)."""
    from mlflow.exceptions import MlflowException

    try:
        return mlflow_client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise


def _ensure_registered_model(mlflow_client, name: str) -> None:
    if _registered(mlflow_client, name) is None:
        mlflow_client.create_registered_model(
            name, description=f"hoh image classifier served by Triton as model {name!r}"
        )


def all_versions(mlflow_client, name: str) -> list:
    found = mlflow_client.search_model_versions(f"name = '{name}'")
    return sorted(found, key=lambda v: int(v.version))


def aliases(mlflow_client, name: str) -> Dict[str, str]:
    """alias -> registry version ({} when the model is not registered yet)."""
    model = _registered(mlflow_client, name)
    return {alias: str(version) for alias, version in (model.aliases if model else {}).items()}


def version_tags(facts: RunFacts, mlflow_run_id: str, state: str) -> Dict[str, str]:
    tags = {
        STATE: state,
        "span": "" if facts.span is None else str(facts.span),
        "blessed": "yes" if facts.blessed else "no",
        "blessing_reason": facts.blessing_reason[:5000],
        "drift": facts.drift_verdict[:5000],
        "source_run": mlflow_run_id,
        "mlmd_pipeline_run": facts.run_id or "",
        "mlmd_model_artifact_id": str(facts.artifact_ids.get("Model", "")),
    }
    if state == "pushed":
        tags[TRITON_VERSION] = tags[TRITON_HISTORY] = str(facts.pushed_version)
    for name, value in facts.metrics.items():
        tags[metric_key("metric", name)] = f"{value:.6g}"
    return {k: v for k, v in tags.items() if v != ""}


def _existing(versions: list, tags: Dict[str, str], keys: Tuple[str, ...]):
    """A registry version recording the same model (a cached re-run must not register twice)."""
    for v in versions:
        if all(v.tags.get(k) == tags.get(k) for k in keys) and all(tags.get(k) for k in keys):
            return v
    return None


def register_run(
    mlflow_client, cfg: HohConfig, facts: RunFacts, mlflow_run_id: str
) -> Tuple[Optional[str], Optional[str], List[str]]:
    """Register the run's model when it was blessed; (version, alias, notes)."""
    if not facts.blessed:
        return None, None, []
    name = cfg.push.model_name
    pushed = bool(facts.pushed and facts.pushed_version)
    if not pushed and not facts.model_uri:
        return None, None, ["blessed, but the run recorded no model to register"]
    state, alias = ("pushed", store.CHAMPION) if pushed else ("challenger", store.CHALLENGER)
    tags = version_tags(facts, mlflow_run_id, state)
    _ensure_registered_model(mlflow_client, name)
    keys = (TRITON_VERSION, STATE) if pushed else ("mlmd_model_artifact_id", STATE)
    version = _existing(all_versions(mlflow_client, name), tags, keys)
    created = version is None
    if created:
        source = facts.pushed_destination if pushed else facts.model_uri
        version = mlflow_client.create_model_version(
            name, source=str(source), run_id=mlflow_run_id, tags=tags
        )
    notes = []
    card = build_card(facts, str(version.version), mlflow_run_id)
    markdown = render_markdown(card)
    mlflow_client.log_dict(mlflow_run_id, card, f"model_card/{CARD_JSON}")
    mlflow_client.log_text(mlflow_run_id, markdown, f"model_card/{CARD_MD}")
    if created:  # a cached re-run leaves the version's card (and Triton's files) alone
        mlflow_client.update_model_version(name, version.version, description=markdown[:20000])
        if pushed:
            notes += write_cards(cfg, int(facts.pushed_version), card, markdown)
    if pushed and not _triton_serves(cfg, int(facts.pushed_version)):
        notes.append(
            f"Triton does not serve version {facts.pushed_version} (rolled back since?): "
            f"{store.CHAMPION} left where it is; see `hoh models list`"
        )
        return str(version.version), None, notes
    mlflow_client.set_registered_model_alias(name, alias, version.version)
    return str(version.version), alias, notes


def _triton_serves(cfg: HohConfig, triton_version: int) -> bool:
    from hoh.components.triton_pusher import repository
    from hoh.components.triton_pusher.rollback import model_dir_of

    served = repository.served_versions(model_dir_of(cfg.model_repository, cfg.push.model_name))
    return served is None or triton_version in served


def write_cards(cfg: HohConfig, triton_version: int, card: dict, markdown: str) -> List[str]:
    """The model card into the served version's directory, next to the model it describes."""
    from hoh.components.triton_pusher.rollback import add_version_file

    where = add_version_file(
        cfg.model_repository,
        cfg.push.model_name,
        triton_version,
        CARD_JSON,
        json.dumps(card, indent=2).encode("utf-8"),
    )
    if where is None:
        return [f"Triton version {triton_version} is gone from disk: no model card written there"]
    add_version_file(
        cfg.model_repository, cfg.push.model_name, triton_version, CARD_MD, markdown.encode("utf-8")
    )
    return []


# --------------------------------------------------------------------------- reading


@dataclasses.dataclass
class Row:
    registry_version: Optional[str]
    triton_version: Optional[int]
    aliases: List[str]
    state: str  # served | on disk | retired | challenger | not registered
    span: str = ""
    metrics: str = ""
    source_run: str = ""


def model_rows(cfg: HohConfig, mlflow_client) -> Tuple[List[Row], List[str]]:
    """Registry versions beside Triton versions, and every disagreement between the two."""
    from hoh.components.triton_pusher.rollback import model_dir_of, version_states

    name = cfg.push.model_name
    states = {s.version: s for s in version_states(model_dir_of(cfg.model_repository, name))}
    versions = all_versions(mlflow_client, name)
    by_alias = aliases(mlflow_client, name)
    alias_of: Dict[str, List[str]] = {}
    for alias, version in by_alias.items():
        alias_of.setdefault(str(version), []).append(alias)
    rows, problems, registered_triton = [], [], {}
    current = set()
    for v in versions:
        tv = v.tags.get(TRITON_VERSION)
        triton = int(tv) if tv and tv.isdigit() else None
        registered_triton.update({t: str(v.version) for t in triton_history(v)})
        if triton is None:
            state = "challenger"
        else:
            current.add(triton)
            s = states.get(triton)
            state = (
                "retired" if s is None or not s.on_disk else ("served" if s.served else "on disk")
            )
        metrics = ", ".join(
            f"{k[len('metric.') :]} {val}"
            for k, val in sorted(v.tags.items())
            if k.startswith("metric.") and k != "metric.example_count"
        )
        rows.append(
            Row(
                str(v.version),
                triton,
                sorted(alias_of.get(str(v.version), [])),
                state,
                v.tags.get("span", ""),
                metrics,
                v.run_id or "",
            )
        )
    for triton, s in sorted(states.items()):
        state = "served" if s.served else "on disk"
        if triton not in registered_triton:
            rows.append(Row(None, triton, [], state))
            problems.append(f"Triton version {triton} is not registered in MLflow")
        elif triton not in current:  # an earlier copy of a version a rollback re-published
            rows.append(Row(f"({registered_triton[triton]})", triton, [], state))
        if s.served and not s.on_disk:
            problems.append(f"config.pbtxt serves Triton version {triton}, which is not on disk")
    served = sorted(t for t, s in states.items() if s.served)
    champion = by_alias.get(store.CHAMPION)
    champion_row = next((r for r in rows if r.registry_version == str(champion)), None)
    if champion is None and served:
        problems.append(
            f"Triton serves version(s) {served} but no registry version is {store.CHAMPION}"
        )
    elif champion_row is not None and champion_row.triton_version not in served:
        problems.append(
            f"{store.CHAMPION} is registry version {champion} (Triton version "
            f"{champion_row.triton_version}) but Triton serves {served or 'nothing'}"
        )
    return rows, problems


def find_version(mlflow_client, cfg: HohConfig, version: str):
    name = cfg.push.model_name
    versions = all_versions(mlflow_client, name)
    for v in versions:
        if str(v.version) == str(version):
            return v
    known = ", ".join(str(v.version) for v in versions) or "none"
    raise UsageError(f"unknown version {version!r} of registered model {name!r} (known: {known})")


# --------------------------------------------------------------------------- changing


def _audit(cfg: HohConfig, entry: dict) -> Path:
    """Append who changed what is served, and why, to OUTPUT/mlflow/lifecycle.jsonl."""
    path = Path(cfg.tracking_dir) / LIFECYCLE_LOG
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(entry, sort_keys=True) + "\n")
    return path


def previous_version(mlflow_client, cfg: HohConfig) -> str:
    """The newest pushed registry version older than the champion whose files are still there."""
    from hoh.components.triton_pusher.rollback import model_dir_of, version_states

    name = cfg.push.model_name
    champion = aliases(mlflow_client, name).get(store.CHAMPION)
    on_disk = {
        s.version for s in version_states(model_dir_of(cfg.model_repository, name)) if s.on_disk
    }
    candidates = [
        v
        for v in all_versions(mlflow_client, name)
        if (champion is None or int(v.version) < int(champion)) and set(triton_history(v)) & on_disk
    ]
    if not candidates:
        raise RegistryMismatch(
            f"no earlier version of {name!r} to roll back to (champion: {champion}; an earlier "
            "version must be registered and still on disk, see `hoh models list`)"
        )
    return str(candidates[-1].version)


def triton_history(mv) -> List[int]:
    """Every Triton version that has held this registry version's model, oldest first."""
    values = (mv.tags.get(TRITON_HISTORY) or mv.tags.get(TRITON_VERSION) or "").split(",")
    return [int(v) for v in values if v.strip().isdigit()]


def _read_card(cfg: HohConfig, triton_version: int) -> Optional[dict]:
    from hoh.components.triton_pusher.rollback import model_dir_of

    path = Path(model_dir_of(cfg.model_repository, cfg.push.model_name)) / str(triton_version)
    try:
        return json.loads((path / CARD_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def serve_version(
    cfg: HohConfig,
    version: Optional[str],
    action: str,
    reason: Optional[str] = None,
    who: Optional[str] = None,
) -> List[str]:
    """Rollback / promote: make Triton serve registry `version` and move `champion` to it.

    The model is published again through the pusher's publishing path (`rollback.republish`
    from its Triton directory, in the flavour it was pushed as; or `flavors.push_model` from the
    registered source for a challenger that was never pushed). The registry is read
    before anything changes; if it cannot be updated afterwards, the previously served version
    is published again and the command fails saying so.
    """
    from hoh.components.triton_pusher import flavors, repository, rollback
    from hoh.components.triton_pusher.settings import TritonPushSettings

    mlflow_client = store.client(cfg)
    name = cfg.push.model_name
    if version is None:
        version = previous_version(mlflow_client, cfg)
    mv = find_version(mlflow_client, cfg, version)
    settings = TritonPushSettings.from_config(cfg.push)
    model_dir = rollback.model_dir_of(cfg.model_repository, name)
    before = repository.served_versions(model_dir) or []
    snapshot = rollback.config_snapshot(cfg.model_repository, name)
    history = triton_history(mv)
    if history:
        on_disk = [v for v in history if v in repository.list_versions(model_dir)]
        old = on_disk[-1] if on_disk else history[-1]
        card = _read_card(cfg, old)  # before the push: it may retire `old`
        result = rollback.republish(cfg.model_repository, settings, old)  # refuses if gone
        if card is not None and result.pushed:  # the same model's facts, renumbered
            card["model"]["triton_version"] = str(result.version)
            write_cards(cfg, result.version, card, render_markdown(card))
    elif action == "rollback":
        raise RegistryMismatch(
            f"version {version} of {name!r} was never served (a challenger); "
            f"use `hoh models promote {version}` to push it"
        )
    else:
        result = flavors.push_model(mv.source, cfg.model_repository, settings, source=mv.source)
    tv = result.version
    when = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    who = who or getpass.getuser()
    try:
        mlflow_client.set_registered_model_alias(name, store.CHAMPION, mv.version)
        if aliases(mlflow_client, name).get(store.CHALLENGER) == str(mv.version):
            mlflow_client.delete_registered_model_alias(name, store.CHALLENGER)
        tags = {
            TRITON_VERSION: str(tv),
            STATE: "pushed",
            TRITON_HISTORY: ",".join(map(str, sorted(set(history) | {tv}))),
            f"last_{action}_at": when,
            f"last_{action}_by": who,
            f"last_{action}_reason": reason or "",
        }
        for key, value in tags.items():
            if value:
                mlflow_client.set_model_version_tag(name, mv.version, key, value)
    except Exception as exc:
        undo = ""
        if result.pushed:
            if rollback.undo_push(cfg.model_repository, name, snapshot, result.version):
                undo = f"; Triton serves {before} again and version {result.version} is removed"
            else:
                undo = f"; Triton version {result.version} stays served (the previous one is gone)"
        raise store.TrackingUnavailable(
            f"{action} of {name!r} version {version} failed: the registry could not be "
            f"updated ({store.short(exc)}){undo}"
        ) from None
    audit = _audit(
        cfg,
        {
            "at": when,
            "by": who,
            "action": action,
            "model": name,
            "registry_version": str(mv.version),
            "triton_version": tv,
            "served_before": before,
            "reason": reason or "",
        },
    )
    what = "already served" if not result.pushed else f"published as Triton version {tv}"
    return [
        f"{action}: {name} registry version {mv.version} is {store.CHAMPION}, {what} "
        f"(Triton served {before or 'nothing'} before); recorded in {audit}"
    ]
