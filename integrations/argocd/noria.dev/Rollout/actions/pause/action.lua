-- Hold the rollout where it is: no step advances, nothing is promoted; abort still works.
obj.spec.paused = true
return obj
