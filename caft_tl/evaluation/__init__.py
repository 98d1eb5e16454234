"""Step 5: statistics over seeds and the validity gates read from results rows (chapters 06–07)."""
