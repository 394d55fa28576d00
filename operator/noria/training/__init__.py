"""Continuous training: TrainingPipeline triggers, trainer Jobs, ModelVersions.

Modules, pure first:
- ``triggers``: one evaluator per trigger kind (initial, manual, schedule, newData, drift,
  performance) of (spec, prior state, observation, now).
- ``runs``: names (``<p>-r<N>``, ``<p>-v<N>``), the run spec, the ConfigMap and Job of a run, and
  what a finished Job says (its pod's termination message holds the trainer's summary).
- ``dask_cluster``: a dask run's DaskCluster (Dask Kubernetes operator), the scheduler address its Job
  gets, and what the observed cluster means for the run (docs/training-dask.md).
- ``results``: a checked trainer summary -> the ModelVersion (stage via creation annotations,
  history, manual approval by annotation ``noria.dev/approve``), the champion of a pipeline.
- ``pipeline``: ``decide(Observation) -> Plan``: coalescing, cooldown, one run at a time, crash
  safety, conditions and phase; a merge patch of status only when something changed.
- ``datasource`` (blocking I/O): rows and fingerprint of a data source for newData.
- ``wakeups``: when each pipeline's next pass runs (no Kopf timers, so no finalizers).
- ``handlers``: the Kopf wiring and the I/O of a pass.

TrainingPipeline status written here (beyond the CRD's named fields, kept because status parts
preserve unknown fields): ``triggers.<kind>`` (what each trigger last observed: e.g. drift
``{state: Above|Below|InsufficientData|Unknown|NoReference, value, feature, samples, since}``,
manual ``{handled, seen, seenAt, changes}``, schedule ``{schedule, next}``, newData
``{rows, fingerprint, baseline}``) and ``cooldownUntil``. ``currentRun`` is all named fields
(``noria.api.training_pipeline.CurrentRun``, ``daskScheduler`` included).

Two store roots: ``NORIA_STORE_ROOT`` is the store as trainer and server pods see it (it goes into
run specs and ModelVersions); ``NORIA_LOCAL_STORE_ROOT`` is the same store as the operator process
sees it (to read drift profiles and count data rows); unset, they are the same.
"""
