"""The closed-loop demo: a generated churn world that drifts, traffic with delayed ground truth,
the story runner (``python -m noria_testbed.demo``) and its HTML report."""
