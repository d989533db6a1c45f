"""Triton kernels (imported only as ``erank_fast.kernels``); this package has no side effects."""
