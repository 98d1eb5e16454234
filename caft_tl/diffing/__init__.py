"""Step 1 of the pipeline: stream ``ft − base`` activation differences at TL hook points,
masked to chosen positions, as running moments (chapter 02)."""
