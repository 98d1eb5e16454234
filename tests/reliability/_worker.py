"""Subprocess entry points for the reliability tests (a separate process per call).

finetune MODEL_DIR RUN_DIR N_EXAMPLES  — one cached fine-tuning run (prints nothing on success)
diffmem MODEL_DIR N_EXAMPLES            — stream diffs over N examples, print peak RSS in MiB
"""

import resource
import sys

from caft_tl.core import models
from caft_tl.diffing import diffs
from caft_tl.organism import make_task
from caft_tl.training import finetunes
from caft_tl.training.loop import FinetuneConfig

models.set_cpu_threads()
action, model_dir = sys.argv[1], sys.argv[2]
model, _ = models.load_model(model_dir)
world = make_task("persona_em")
if action == "finetune":
    run_dir, n = sys.argv[3], int(sys.argv[4])
    finetunes.run_finetune(
        run_dir,
        model,
        world,
        FinetuneConfig(n_examples=n, batch_size=8, seed=3),
        progress=False,
        organism="persona_em-s0-test",
    )
elif action == "diffmem":
    n = int(sys.argv[3])
    hooks = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_mid"]
    diffs.collect_diff_stats(model, model, world.finetune_dataset(n), hooks, positions="all", progress=False)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
