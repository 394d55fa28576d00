"""``kubectl noria``: the day-2 command line for Noria (docs/operations/cli.md).

- ``main``: the command line, and the one write each command makes;
- ``cluster``: the Kubernetes I/O (lightkube, the operator's client), kubeconfig and context as kubectl reads them;
- ``actions``: what each write command sends and says, or why it refuses (pure);
- ``rollout_view``, ``pipeline_view``, ``style``: the trees and tables (pure: objects in, text out).
"""
