"""Compile a flow for Argo Workflows and keep both manifests: the WorkflowTemplate and the Sensor.

    python -m torchperf.backends.argo_compile OUT.json FLOW.py [metaflow options] \
        argo-workflows create --only-json

Metaflow's ``create --only-json`` prints the template but drops the Sensor it compiled for a
``@trigger`` flow; the Sensor is only reachable on the object ``argo_workflows_cli.make_flow``
returns. This runs the flow's own CLI in this process with ``make_flow`` wrapped so that both land
in OUT.json. Nothing here talks to Kubernetes: ``--only-json`` skips every cluster call.
The compile server (compile_server.py) runs ``compile_flow`` in a forked child per compile.
"""

from __future__ import annotations

import json
import runpy
import sys


def compile_flow(out: str, flow_file: str, options: list[str]) -> None:
    """Run ``flow_file``'s CLI with ``options`` here; the manifests it compiles go to ``out``."""
    from metaflow.plugins.argo import argo_workflows_cli

    make_flow = argo_workflows_cli.make_flow

    def capturing_make_flow(*args, **kwargs):
        flow = make_flow(*args, **kwargs)
        sensor = getattr(flow, "_sensor", None)
        with open(out, "w") as handle:
            json.dump(
                {
                    "workflow_template": flow._workflow_template.to_json(),
                    "sensor": sensor.to_json() if sensor else None,
                },
                handle,
            )
        return flow

    argo_workflows_cli.make_flow = capturing_make_flow
    sys.argv = [flow_file, *options]
    runpy.run_path(flow_file, run_name="__main__")


def main(argv: list[str]) -> None:
    out, flow_file, *options = argv
    compile_flow(out, flow_file, options)


if __name__ == "__main__":
    main(sys.argv[1:])
