"""Compression methods: each is a pass from IR to IR."""
