"""Exports for inference servers: Triton model repositories."""
