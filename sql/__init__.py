"""mmsa.sql: the report pack (reports/) and the dashboard's own queries (dashboard/), one SQL file each.

Installed as the data package mmsa.sql (pyproject.toml maps this folder), so that mmsa.report and
mmsa.dashboard find the files through importlib.resources in a wheel as in a checkout.
"""
