"""mmsa.deployments: prefect.yaml, the Prefect deployment definitions (the one definition of them).

Installed as the data package mmsa.deployments (pyproject.toml maps this folder), found by
mmsa.flows.serve through importlib.resources.
"""
