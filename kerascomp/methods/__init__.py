"""Compression methods: each is one registered object (see ``registry``) whose passes go from IR to IR.

Importing the package registers the built-in methods (``builtin``).
"""
from kerascomp.methods import builtin  # noqa: F401  (registers fga, l1, correlation, svd, joint_svd, tucker, collaborative)
