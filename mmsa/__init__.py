"""mmsa: multimodal (text + image) sentiment scoring of social-media posts.

Stages, one module each, data flowing one way:
source -> fetch -> model/infer -> store -> report.
"""

__version__ = "0.1.0"
