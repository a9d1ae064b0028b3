"""Training: the data mix, sample encoding, packing, the loop, its engine and checkpoints."""
