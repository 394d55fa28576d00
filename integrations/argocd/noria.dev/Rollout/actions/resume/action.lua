-- Carry on from the same step.
obj.spec.paused = false
return obj
