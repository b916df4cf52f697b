"""Studies: a fair comparison in one command.

``peftlab study method=lora,pissa --tune "optimizer.lr=tag(log,interval(1e-5,1e-2))" --trials 8 --seeds 3``
tunes every configuration on the validation split with the same budget (the same
values of the tuned keys), re-runs each configuration's best setting with fresh
seeds, and reports test results with confidence intervals and a test of each
configuration against the best (``peftlab compare <study folder>``).

A study folder ``<runs>/studies/<name>/v<N>`` holds ``study.json`` (what it tunes, the
seeds, its two sweeps, the settings chosen); its tuning and final runs are ordinary
sweeps and run folders. Modules: ``spec`` (the ``--tune`` syntax), ``folder``
(study.json, finding studies), ``choose`` (the choice on validation), ``run``
(the phases, and continuing a stopped study), ``sensitivity`` (the figure).
No torch at module level.
"""

from __future__ import annotations

from peftlab.study.folder import find_study, is_study, read
from peftlab.study.run import StudyOutcome, StudyPlan, continue_study, plan_study, start_study

__all__ = ["StudyOutcome", "StudyPlan", "continue_study", "find_study", "is_study", "plan_study", "read",
           "start_study"]
