-- Try the version this Rollout rejected (aborted or rolled back) again: noria.dev/retry.
local verdict = (obj.status or {}).lastVerdict
if verdict == nil or verdict.stage ~= "Rejected" then
  error("nothing to retry: the Rollout has not rejected a version (status.lastVerdict)", 0)
end
if obj.status.canaryVersion ~= nil then
  error("a rollout is in progress (" .. obj.status.canaryVersion .. "): abort it or let it finish first", 0)
end
if obj.metadata.annotations == nil then
  obj.metadata.annotations = {}
end
obj.metadata.annotations["noria.dev/retry"] = "true"
return obj
