-- Argo CD health of a Noria Rollout (rollouts.noria.dev), read from the conditions the operator
-- writes (operator/noria/conditions.py); status.phase is only their summary.
--   Progressing  the operator has not yet acted on this spec (observedGeneration < generation), a
--                canary/blue-green/shadow is under way, or the stable version's pods are not ready
--   Suspended    held for a person: spec.paused (kubectl noria pause), a pause step without a
--                duration (PausedForPromotion), or an inconclusive analysis waiting for promote
--   Degraded     an abort (analysis failed, aborted by hand, progress deadline, ...), an invalid spec,
--                a refused artifact, a failing reconcile
--   Healthy      the stable version serves all traffic and is ready
-- Runs in Argo CD's sandbox for argocd-cm scripts: base, table and os.time/os.date only (no string library).

local function condition(kind)
  if obj.status == nil or obj.status.conditions == nil then
    return nil
  end
  for _, c in ipairs(obj.status.conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

local function isTrue(c)
  return c ~= nil and c.status == "True"
end

-- "Reason: message", the way kubectl describe shows a condition.
local function said(c)
  local reason = c.reason or c.type
  if c.message ~= nil and c.message ~= "" then
    return reason .. ": " .. c.message
  end
  return reason
end

local function health(status, message)
  return {status = status, message = message}
end

local st = obj.status
if st == nil then
  return health("Progressing", "Waiting for the Noria operator to observe the Rollout")
end
local generation = tonumber(obj.metadata.generation)
local observed = tonumber(st.observedGeneration)
if observed == nil or (generation ~= nil and observed < generation) then
  return health("Progressing", "Waiting for the Noria operator to act on generation " .. tostring(generation))
end

local degraded = condition("Degraded")
if isTrue(degraded) then
  -- A Rollout that follows a pipeline and has never served waits for the first trained version:
  -- that is the start of the loop, not a failure. A pinned version that does not exist is one.
  local following = obj.spec.source ~= nil and obj.spec.source.pipeline ~= nil
  if degraded.reason == "NoModelVersion" and st.stableVersion == nil and following then
    return health("Progressing", said(degraded))
  end
  return health("Degraded", said(degraded))
end
local reconciled = condition("Reconciled")
if reconciled ~= nil and reconciled.status == "False" then
  return health("Degraded", said(reconciled))
end

local where = ""
if st.canaryVersion ~= nil then
  where = " (" .. st.canaryVersion .. " at " .. tostring(st.canaryWeight or 0) .. "%)"
end
-- Paused: PausedByUser (spec.paused), PausedForPromotion, AnalysisInconclusive.
local paused = condition("Paused")
if isTrue(paused) then
  return health("Suspended", said(paused))
end
local progressing = condition("Progressing")
if progressing ~= nil and progressing.reason == "PausedByUser" then
  return health("Suspended", said(progressing))
end
if obj.spec.paused == true then
  return health("Suspended", "PausedByUser: spec.paused holds the rollout" .. where .. "; resume to go on")
end
if isTrue(progressing) then
  return health("Progressing", said(progressing))
end
local ready = condition("Ready")
if isTrue(ready) then
  return health("Healthy", ready.message or "")
end
if ready ~= nil then
  return health("Progressing", said(ready))
end
return health("Progressing", st.message or "Waiting for the Noria operator")
