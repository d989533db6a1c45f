"""Every implementation the engine calls: each op validates its inputs and runs its Triton
kernel (erank_fast/kernels/, on CUDA or the Triton interpreter) or its PyTorch path
(elsewhere); prefix prefill and the CPU prefill of shared-prefix attention have PyTorch paths
only. Their oracle is erank_fast.reference."""
