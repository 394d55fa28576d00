"""``noria backtest``: replay a TrainingPipeline spec over historical, time-stamped data.

Users tune thresholds, windows and the cooldown on their own history before they apply a spec.
The replay runs Noria's own code wherever the operator, the trainer and the server would:

- the operator's pass: ``noria.training.pipeline.decide`` (and through it ``noria.training.triggers``
  and the run spec builder ``noria.training.runs``), fed observations built from the replayed
  traffic instead of Prometheus and the Kubernetes API;
- the server's bin counter (``noria_server.telemetry.FeatureBinCounter``) on the rows each version
  answered, and its feedback counters (``(actual, predicted)`` pairs) on the labels that came back;
- the trainer, in process (``noria_trainer.run.run_from_file``, what the Job's command runs), on the
  operator's run spec, against a temporary store holding the data landed up to the simulated time
  and the prediction/feedback logs the servers would have written.

Modules: ``clock`` (slices of the replay), ``observe`` (synthetic observations), ``replay`` (the
loop and its record), ``plot``, ``cli`` (``python -m noria backtest``), ``scenarios`` (synthetic
drift streams) and ``evaluate`` (the scenario table of docs/backtest.md).

Needs the trainer and server extras (``pip install 'noria[trainer,server]'``, both in ``dev``).
"""
