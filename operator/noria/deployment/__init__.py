"""Continuous deployment: Rollouts that put ModelVersions in front of users, step by step.

Pure decisions (``spec``, ``strategies``, ``analysis``, ``checks``, ``objects``, ``decide``) are kept
apart from API I/O (``cluster``, ``providers``, ``handlers``), so every decision is table-tested
without a cluster and the handler only observes, decides and acts.
"""
