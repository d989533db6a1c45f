"""Pure-PyTorch versions of every op, with the launchers' signatures: the CPU path and the
test oracle for the Triton kernels."""
