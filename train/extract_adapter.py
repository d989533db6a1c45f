"""Extract a full fine-tune's change to its base model as a LoRA adapter
(``erank_fast.training.adapter_extract``).

    python train/extract_adapter.py runs/erank-smol-v16/checkpoint-200 \\
        --base smollm2-135m-instruct --rank 32 --out runs/v16-rank32

Every linear weight's difference from the base becomes its best rank-r approximation (truncated
SVD); the relative error of each, and every other weight the fine-tune changed (embeddings,
norms: an adapter on linear layers cannot carry them), are printed. Evaluate the result before
trusting it (train/curve.py), then package it with train/export_adapter.py; an existing
``--out`` is refused.
"""

from erank_fast.training.adapter_extract import main

if __name__ == "__main__":
    main()
