"""The Trainer's model, input pipeline and export (`hoh.trainer.task.run_fn`).

Kept import-free so the pipeline's log reader and run summary can use the contracts below
without loading TensorFlow.
"""

# Files the Trainer writes into its ModelRun artifact, read by the run summary, benchmarks and
# notebooks: per-epoch Keras history, and timing plus training decisions (class weights).
HISTORY_FILE = "history.json"
TIMING_FILE = "timing.json"

# The Trainer logs one line per epoch starting with this; `hoh run` echoes them indented.
EPOCH_PREFIX = "hoh-epoch: "
