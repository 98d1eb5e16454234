"""Running the chapters: notebook parameters, the papermill suite, sweeps (local or Ray) and the
JupyterLab browser check."""
