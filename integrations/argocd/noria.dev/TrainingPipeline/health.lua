-- Argo CD health of a Noria TrainingPipeline (trainingpipelines.noria.dev), from the conditions the
-- operator writes (operator/noria/conditions.py).
--   Progressing  the operator has not yet acted on this spec, a training run is in progress, or no
--                model was accepted yet and nothing failed
--   Degraded     a spec that blocks every run (invalid, data source out of scope), the last run
--                failed, the only runs so far were refused by the quality gate, or a failing reconcile
--   Healthy      a champion version exists and the last run did not fail
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
  return health("Progressing", "Waiting for the Noria operator to observe the pipeline")
end
local generation = tonumber(obj.metadata.generation)
local observed = tonumber(st.observedGeneration)
if observed == nil or (generation ~= nil and observed < generation) then
  return health("Progressing", "Waiting for the Noria operator to act on generation " .. tostring(generation))
end

local degraded = condition("Degraded")
if isTrue(degraded) and (degraded.reason == "InvalidSpec" or degraded.reason == "DataSourceOutOfScope") then
  return health("Degraded", said(degraded))
end
local reconciled = condition("Reconciled")
if reconciled ~= nil and reconciled.status == "False" then
  return health("Degraded", said(reconciled))
end
local training = condition("Training")
if isTrue(training) then
  return health("Progressing", said(training))
end
if isTrue(degraded) then
  return health("Degraded", said(degraded))
end
local ready = condition("Ready")
if isTrue(ready) then
  local message = ready.message or ""
  local triggers = condition("TriggersHealthy")
  if triggers ~= nil and triggers.status ~= "True" then
    message = message .. "; triggers not evaluated: " .. said(triggers)
  end
  return health("Healthy", message)
end
local last = (st.lastRuns or {})[1]
if last ~= nil and last.outcome == "Rejected" then
  local why = last.message or last.reason or ""
  return health("Degraded", "GateRejected: no model accepted yet; run " .. last.id .. " was refused by the gate: " .. why)
end
if ready ~= nil then
  return health("Progressing", said(ready))
end
return health("Progressing", st.message or "Waiting for the Noria operator")
