"""The test oracle: plain PyTorch versions of every op, with the ops' signatures, written to be
obviously correct (one token and one head at a time, float64) and never on a fast path."""
