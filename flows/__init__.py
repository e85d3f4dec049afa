"""mmsa.flows: the Prefect flows, thin wiring over mmsa.pipeline (the app layer, with mmsa.cli).

Installed as mmsa.flows (pyproject.toml maps this top-level folder); nothing below the app layer
imports it, so the library runs without Prefect (docs/architecture.md).
"""
