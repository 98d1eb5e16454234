"""Step 4: one training loop (pre-training of organisms and fine-tuning under an intervention),
checkpoints, and fine-tuning runs as cached, fanned-out units (chapters 00, 01, 05)."""
