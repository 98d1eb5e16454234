"""Step 2: directions from the diffs and from SAEs — PCA, SAELens SAEs and latent rankings,
interpretation (top examples, logit lens, concept scores, the choice rule), autointerp and the
direction sets chapters compare (chapter 02–03)."""
