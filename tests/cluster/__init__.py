"""A simulated Kubernetes cluster with Argo Workflows and Argo Events on this machine.

Every step of a created Workflow really runs, as a local process standing in for its pod
(tests/cluster/pods.py), from the compiled WorkflowTemplate (executor.py), behind a Kubernetes
API on loopback (api.py), with an events webhook only pods can reach (network.py), a Metaflow
metadata service (metadata.py), moto's S3 and the pods' Python built from image/requirements.txt
(image.py). ``sim.SimulatedCluster`` starts all of it; tests/cluster/run_sim.py runs a sweep on it.
"""
