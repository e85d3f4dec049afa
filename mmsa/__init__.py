"""mmsa: multimodal (text + image) sentiment scoring of social-media posts.

Stages, data flowing one way: source -> images (the mmsa.images package) -> model (encoders, infer) -> store ->
reports, wired by mmsa.pipeline; the app layer (mmsa.cli, mmsa.flows, mmsa.demo, mmsa.dashboard) sits on
top and nothing below it imports it (docs/architecture.md).
"""

__version__ = "0.1.0"
