"""Serve metaflow-local-service's app with client-chosen ids honoured, as Metaflow's service does.

    python tests/cluster/metadata_server.py ROOT PORT

metaflow-local-service 0.2.0 always assigns run and task ids itself. Netflix's metadata
service keeps the ``run_number`` / ``task_id`` the client sends, and Metaflow on Argo relies on
it: every pod registers its run as ``argo-<workflow name>`` and its task as ``t-<hash>`` (chosen
in the pod's shell command), and later pods and the client look them up by those ids. Without
this a pod's task lands under a run that does not exist and the service answers 500. The store
functions the package's routes call are wrapped, so every other route is the package's own.
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


def main(root: str, port: int) -> None:
    import uvicorn
    from metaflow_local_service import server, store

    honour_client_ids(store)
    app = server.create_app(root)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
