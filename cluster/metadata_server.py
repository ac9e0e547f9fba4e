"""Serve metaflow-local-service's app with client-chosen ids honoured, as Metaflow's service does.

    python tests/cluster/metadata_server.py ROOT PORT

Two gaps of metaflow-local-service 0.2.0 against Metaflow's own service, which Argo runs hit:
- it always assigns run and task ids itself. Netflix's metadata service keeps the
  ``run_number`` / ``task_id`` the client sends, and Metaflow on Argo relies on it: every pod
  registers its run as ``argo-<workflow name>`` and its task as ``t-<hash>`` (chosen in the
  pod's shell command), and later pods and the client look them up by those ids. Without this a
  pod's task lands under a run that does not exist and the service answers 500;
- it has no route for one artifact (``.../tasks/<id>/artifacts/<name>[/attempt/<n>]``), which
  the client uses for ``task["_success"]``: without it every ``Task.successful`` and
  ``Run.successful`` read through the service is False, and the analytics flow sees no variant
  done.
The store functions the package's routes call are wrapped and the missing route is added, so
every other route is the package's own.
"""

from __future__ import annotations

import sys


def honour_client_ids(store) -> None:
    create_run, create_task = store.create_run, store.create_task

    def create_run_with_id(flow_name: str, body: dict):
        run_id = body.get("run_number")
        if run_id in (None, ""):
            return create_run(flow_name, body)
        store.get_or_create_flow(flow_name, body)
        existing = store.get_run(flow_name, str(run_id))
        if existing is not None:
            return existing
        record = store._build_run_record(flow_name, str(run_id), body)
        provider = store._local()
        provider._save_meta(provider._create_and_get_metadir(flow_name, str(run_id)),
                            {"_self": record})  # fmt: skip
        return record

    def create_task_with_id(flow_name: str, run_id: str, step_name: str, body: dict):
        task_id = body.get("task_id")
        if task_id in (None, ""):
            return create_task(flow_name, run_id, step_name, body)
        store.get_or_create_step(flow_name, run_id, step_name, body)
        existing = store.get_task(flow_name, run_id, step_name, str(task_id))
        if existing is not None:
            return existing
        record = store._build_task_record(flow_name, run_id, step_name, str(task_id), body)
        provider = store._local()
        folder = provider._create_and_get_metadir(flow_name, run_id, step_name, str(task_id))
        provider._save_meta(folder, {"_self": record})
        return record

    store.create_run, store.create_task = create_run_with_id, create_task_with_id


def add_artifact_route(app, store) -> None:
    from fastapi.responses import JSONResponse

    def latest(records: list[dict], attempt: int | None):
        if attempt is not None:
            records = [r for r in records if int(r.get("attempt_id", 0)) == attempt]
        return max(records, key=lambda r: int(r.get("attempt_id", 0))) if records else None

    base = "/flows/{flow_name}/runs/{run_id}/steps/{step_name}/tasks/{task_id}/artifacts/{name}"

    async def get_artifact(flow_name, run_id, step_name, task_id, name, attempt: int = None):
        records = [
            r for r in store.get_artifacts(flow_name, run_id, step_name, task_id)
            if r.get("name") == name
        ]  # fmt: skip
        record = latest(records, attempt)
        if record is None:
            return JSONResponse({"message": f"artifact {name} not found"}, status_code=404)
        return JSONResponse(record)

    app.add_api_route(base, get_artifact, methods=["GET"])
    app.add_api_route(base + "/attempt/{attempt}", get_artifact, methods=["GET"])


def main(root: str, port: int) -> None:
    import uvicorn
    from metaflow_local_service import server, store

    honour_client_ids(store)
    app = server.create_app(root)
    add_artifact_route(app, store)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
