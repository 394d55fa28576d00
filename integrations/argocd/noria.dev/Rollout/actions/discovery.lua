-- Which Rollout actions make sense now. Argo CD shows a disabled action greyed out; running one
-- anyway reaches the action's own check, which refuses with the reason.
-- Annotations are the ones the operator reads (operator/noria/contracts.py); spec.paused is the field
-- kubectl noria pause/resume sets.
local actions = {}
local st = obj.status or {}
local annotations = obj.metadata.annotations or {}
local paused = obj.spec.paused == true
-- A candidate is being introduced (canary, blue-green preview or shadow): the only time promote
-- and abort have something to act on.
local inFlight = st.canaryVersion ~= nil
-- The last version this Rollout judged was rejected by it (aborted or rolled back): retry brings it back.
local rejected = st.lastVerdict ~= nil and st.lastVerdict.stage == "Rejected"

actions["promote"] = {
  disabled = not inFlight or paused or annotations["noria.dev/promote"] ~= nil or annotations["noria.dev/abort"] ~= nil,
  displayName = "Promote (past the current pause or analysis)",
}
actions["promote-full"] = {
  disabled = not inFlight or paused or annotations["noria.dev/promote"] == "full" or annotations["noria.dev/abort"] ~= nil,
  displayName = "Promote fully (skip the remaining steps)",
}
actions["abort"] = {
  disabled = not inFlight or annotations["noria.dev/abort"] ~= nil,
  displayName = "Abort (traffic back to the stable version)",
}
actions["retry"] = {
  disabled = inFlight or not rejected or annotations["noria.dev/retry"] ~= nil,
  displayName = "Retry the rejected version",
}
actions["pause"] = {disabled = paused, displayName = "Pause"}
actions["resume"] = {disabled = not paused, displayName = "Resume"}
return actions
