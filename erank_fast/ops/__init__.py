"""Op launchers: validate, allocate, and run the Triton kernel on CUDA or the PyTorch
reference elsewhere. The engine calls only these."""
