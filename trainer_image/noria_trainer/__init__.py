"""noria_trainer: the code inside a Noria trainer Job — one continuous-training run.

Usage (the operator mounts the run spec from ConfigMap ``<pipeline>-r<N>`` at /etc/noria/run)::

    python -m noria_trainer run --spec /etc/noria/run/spec.json --termination-log /dev/termination-log

stdout carries one JSON progress line per stage event (``stage``, ``event``, ``elapsed``, ``rows``,
``pct`` while tuning, ``seconds`` and ``peakRssMB`` when a stage ends) and, last, the run summary
(≤ 4 KB), which is also written to the termination-log path.

Exit codes:

====  =========================================================================================
0     succeeded: the gate passed *or rejected* the contender (``verdict``); the artifact set exists
1     unexpected error (a bug): the reason names the exception
2     bad run spec or pipeline spec, or an estimator that is not allowed (refused before import)
3     data: unreadable, corrupt or empty source, or a window with no rows
4     validation: missing column, null target, wrong types, too few rows, too many missing values
5     training, tuning or evaluation failed, or the saved model would not load back identically
6     champion: its artifact is refused by the loader (file, caps, digest, types: the kind is in the reason)
7     output: ``outputUri`` exists already (versions are never overwritten) or is not writable
====  =========================================================================================

Any non-zero exit writes nothing under ``outputUri``.
"""
