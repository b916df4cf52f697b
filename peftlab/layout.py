"""The names of the files and folders of the run store, in one place.

Every module that reads or writes a run folder or a sweep folder takes its
names from here, so that a reader and a writer never disagree on a spelling.
No imports: anything may use it.
"""

from __future__ import annotations

# ---- a run folder: <root>/<name>/v<N>/
META_FILE = "meta.json"  # its presence makes a folder a run folder
SUMMARY_FILE = "summary.json"
CONFIG_FILE = "config.yaml"
OVERRIDES_FILE = "overrides.txt"
METRICS_FILE = "metrics.jsonl"
ANALYSIS_FILE = "analysis.json"
RANKS_FILE = "ranks.json"  # {"ranks": {module: rank}}: per-matrix ranks a method chose (Method.final_ranks)
OWNER_FILE = ".owner"  # flock-ed by the one process that writes the run
ADAPTER_DIR = "adapter"
ADAPTER_CONFIG_FILE = "adapter_config.json"  # in adapter/: what rebuilds the trained model
CHECKPOINTS_DIR = "checkpoints"
CHECKPOINT_PREFIX = "step_"  # checkpoints/step_NNNNNNN; a .tmp suffix while it is being written
BEST_DIR = "best"
GENERATIONS_DIR = "generations"
PREDICTIONS_DIR = "predictions"  # a classifier's prediction per example, per evaluated split and step

# ---- a sweep folder: <root>/sweeps/<name>/v<N>/
SWEEPS_DIR = "sweeps"
STUDIES_DIR = "studies"
STUDY_FILE = "study.json"  # its presence makes a folder a study folder (see peftlab.study)
SWEEP_FILE = "sweep.json"  # its presence makes a folder a sweep folder; written once, at creation
STOP_FILE = "stop"  # present while the sweep process asks its members in other processes to stop
HYDRA_DIR = "hydra"  # Hydra's output of the first launch; hydra-2, hydra-3, ... of each --continue
LAUNCH_FILE = "launch.json"  # in a launch's Hydra dir, written once: what it runs and who launched it
