"""Online evaluation of policies in the domains' environments (``lram eval``).

* :mod:`lram.evaluation.envs`: the environment of a (domain, task folder) pair, observations as in the data;
* :mod:`lram.evaluation.rollout`: :func:`evaluate_task`, many environments of a task stepped together, one
  recurrent step per environment step, return-to-go conditioning, per-environment resets;
* :mod:`lram.evaluation.evaluate`: a checkpoint in all its tasks, random baselines, normalised scores;
* :mod:`lram.evaluation.plots`: report plots (per-domain mean / IQM with bootstrap CIs, per-task pages) and
  learning curves of a run (``lram plot``).
"""

from lram.evaluation.driver import EpisodeDriver
from lram.evaluation.envs import ENV_BUILDERS, make_eval_env
from lram.evaluation.evaluate import evaluate_checkpoint, format_report, random_policy_returns
from lram.evaluation.rollout import EpisodeResult, evaluate_task, summarize

__all__ = ["ENV_BUILDERS", "EpisodeDriver", "EpisodeResult", "evaluate_checkpoint", "evaluate_task", "format_report",
           "make_eval_env", "random_policy_returns", "summarize"]
