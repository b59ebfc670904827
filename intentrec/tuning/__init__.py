"""Tuning: the same trial budget for every variant, chosen on validation, then tested once.

``intentrec tune <experiment> [tune.trials=N] [tune.epochs=E] [key=value ...]`` reads the
experiment's ``tune:`` block::

    tune:
      trials: 20          # finished trials per variant, the same for every variant
      epochs: 5           # max epochs of one trial; pruned trials stop earlier
      space:              # config key -> {low, high[, log][, step]} | {choices: [...]}
        optim.lr: {low: 1e-4, high: 1e-2, log: true}
        model.dropout: {low: 0.0, high: 0.5}
        model.d_model: {choices: [32, 64, 128]}
      # optional: seed (TPE sampler, default 0), pruner (median | halving | none, default
      # median), startup_trials (random trials before TPE models the results, default 5)

and runs, for every variant of the experiment:

1. **Search** (validation only). One Optuna study per variant, ``<experiment>/<variant>``,
   in ``<out_dir>/<experiment>/tune/study.db`` (SQLite; ``optuna-dashboard
   sqlite:///<that path>`` opens it). A trial is a normal run (``train.train_run``) of the
   variant's config with the sampled values, ``trainer.max_epochs = tune.epochs``, the
   experiment's first seed, no test pass, under ``<out_dir>/<experiment>-tune/<variant>/
   trial<n>/seed<k>/`` (wandb group ``<experiment>-tune-<variant>``). Its objective is the
   best validation value of ``trainer.monitor`` (that of the best checkpoint); a callback
   reports the monitored value after every validation epoch and the pruner (median or
   successive halving) can stop the trial early.
2. **Reports** in ``<out_dir>/<experiment>/tune/``: ``best.md``/``best.csv`` (best
   configuration per variant), ``trials.csv``, ``trials.png``.
3. **Final runs**: each variant's best values are applied and the experiment's seeds run
   as the normal experiment ``<experiment>-tuned`` (its ``summary.md`` has the test
   metrics). ``--search-only`` stops after the reports.

Equal budgets and resume. A variant's budget is its number of *finished* trials, COMPLETE
plus PRUNED; a killed ``tune`` is resumed by running the same command, which runs only the
remainder of each budget. A trial that raised (the command stopped with it) is FAIL in the
study and a trial left RUNNING by a killed process is marked FAIL on the next start: neither
counts, and the remainder runs them again, with the same sampled values (so a failure the
values themselves cause, say a diverging learning rate, recurs: narrow the space). One
``tune`` process per experiment at a time (an flock in the tune folder, released by the OS
when a process dies; a second process is refused), which is why a RUNNING trial found at
start can only be a leftover. The sampler is seeded afresh for each
trial with ``tune.seed + <finished trials so far>``, so a killed and resumed study samples
exactly what an uninterrupted one would, and every variant starts from the same random
configurations. A study holding more finished trials than the budget (an earlier run with
a larger ``tune.trials``) is reported on its first ``trials`` finished trials only, so every
variant is still judged on the same number.
"""

from intentrec.tuning.search import tune_experiment
from intentrec.tuning.space import TuneSpec, load_tune

__all__ = ["TuneSpec", "load_tune", "tune_experiment"]
