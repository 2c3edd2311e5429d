"""Optional MLflow mirror (`pip install 'prefloop[mlflow]'`): each version as an MLflow run plus a
registered model version, each alias as the same MLflow alias. prefloop's store stays the source of
truth; `sync` is idempotent (a version already mirrored, found by its `prefloop.id` tag, is not
logged again) and sets MLflow's aliases to the store's current state, so a failed mirror is repaired
by running it again (`prefloop models mirror --mlflow URI`).

A `file:` URI (or a plain folder) works offline; MLflow 3 keeps its file store in maintenance mode
and refuses it unless MLFLOW_ALLOW_FILE_STORE=true, which `sync` sets for such URIs only.
"""

from __future__ import annotations

import os

from prefloop.registry import RegistryError
from prefloop.store import Store

EXPERIMENT = "prefloop-registry"


def _client(uri: str):
    try:
        from mlflow import MlflowClient
    except ImportError as err:
        raise RegistryError("the MLflow mirror needs the mlflow client: pip install 'prefloop[mlflow]' "
                            "(or mlflow-skinny)") from err
    if "://" not in uri or uri.startswith("file:"):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _numeric(metrics: dict) -> dict:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _mlflow_key(name: str) -> str:
    return "".join(c if c.isalnum() or c in "_-./ " else "_" for c in name)


def sync(store: Store, name: str, uri: str) -> dict[str, int]:
    """Mirror every version of `name` and its current aliases into MLflow at `uri`.
    Returns prefloop version tag -> MLflow model version number. Raises RegistryError if MLflow fails."""
    from prefloop.registry.versions import recorded_metrics

    client = _client(uri)
    try:
        experiment = client.get_experiment_by_name(EXPERIMENT)
        experiment_id = experiment.experiment_id if experiment else client.create_experiment(EXPERIMENT)
        if not client.search_registered_models(f"name = '{name}'"):
            client.create_registered_model(name, description="mirrored from the prefloop registry")
        mirrored = {mv.tags.get("prefloop.id"): int(mv.version) for mv in client.search_model_versions(f"name = '{name}'")}
        numbers = {}
        for version in store.model_versions(name):
            key = str(version["id"])
            if key not in mirrored:
                run = client.create_run(experiment_id, run_name=f"{name}:{version['version']}",
                                        tags={"prefloop.name": name, "prefloop.version": version["version"]})
                rid = run.info.run_id
                for k, v in _numeric(recorded_metrics(store, version)).items():
                    client.log_metric(rid, _mlflow_key(k), v)
                for k, v in (version["meta"].get("config") or {}).items():
                    if v is not None and not isinstance(v, (dict, list)):
                        client.log_param(rid, _mlflow_key(k), str(v)[:500])
                client.set_tag(rid, "prefloop.path", version["path"])
                client.set_terminated(rid)
                mv = client.create_model_version(name, source=version["path"], run_id=rid,
                                                 tags={"prefloop.id": key, "prefloop.version": version["version"],
                                                       "prefloop.parent_id": str(version["parent_id"] or "")})
                mirrored[key] = int(mv.version)
            numbers[version["version"]] = mirrored[key]
        by_id = {v["id"]: v["version"] for v in store.model_versions(name)}
        current = store.aliases(name)
        model = client.get_registered_model(name)
        for alias in set(getattr(model, "aliases", {}) or {}) - set(current):
            client.delete_registered_model_alias(name, alias)
        for alias, vid in current.items():
            client.set_registered_model_alias(name, alias, numbers[by_id[vid]])
    except RegistryError:
        raise
    except Exception as err:  # noqa: BLE001 - any MLflow failure: the store is already right, say how to retry
        raise RegistryError(f"mirroring {name} into MLflow at {uri} failed ({type(err).__name__}: {err}); the prefloop "
                            f"store is unchanged and correct: fix MLflow and run prefloop models mirror --name {name} "
                            f"--mlflow {uri}") from err
    return numbers
