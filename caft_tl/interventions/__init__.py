"""Step 3: the intervention modes (one registry), the ``Intervention`` that applies a mode to
subspaces at hook points, and the checks on the untrained base model (chapter 04)."""
