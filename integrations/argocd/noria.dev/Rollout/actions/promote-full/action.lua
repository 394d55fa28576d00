-- Skip every remaining step and promote now: noria.dev/promote=full.
if obj.status == nil or obj.status.canaryVersion == nil then
  error("nothing to promote: no version is being rolled out (status.canaryVersion is empty)", 0)
end
if obj.spec.paused == true then
  error("the Rollout is paused (spec.paused): resume it first", 0)
end
if obj.metadata.annotations == nil then
  obj.metadata.annotations = {}
end
obj.metadata.annotations["noria.dev/promote"] = "full"
return obj
