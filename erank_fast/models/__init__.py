"""One decoder for Qwen3 / Qwen2 / Llama checkpoints, and its weight loading."""
