-- Past the current gate (a pause or an analysis step), once: noria.dev/promote=true. The operator
-- removes the annotation when it has acted on it.
if obj.status == nil or obj.status.canaryVersion == nil then
  error("nothing to promote: no version is being rolled out (status.canaryVersion is empty)", 0)
end
if obj.spec.paused == true then
  error("the Rollout is paused (spec.paused): resume it first", 0)
end
if obj.metadata.annotations == nil then
  obj.metadata.annotations = {}
end
obj.metadata.annotations["noria.dev/promote"] = "true"
return obj
