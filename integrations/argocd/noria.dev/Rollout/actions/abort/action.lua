-- Traffic back to the stable version, the candidate rejected: noria.dev/abort. Works while paused.
if obj.status == nil or obj.status.canaryVersion == nil then
  error("nothing to abort: no version is being rolled out (status.canaryVersion is empty)", 0)
end
if obj.metadata.annotations == nil then
  obj.metadata.annotations = {}
end
obj.metadata.annotations["noria.dev/abort"] = "true"
return obj
