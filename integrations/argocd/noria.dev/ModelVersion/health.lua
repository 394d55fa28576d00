-- Argo CD health of a Noria ModelVersion (modelversions.noria.dev), from its stage and conditions
-- (operator/noria/contracts.py names the stages, operator/noria/conditions.py the reasons).
--   Suspended    Registered or Candidate: waiting for a person to approve or reject it
--   Progressing  being rolled out (Canary, Shadow, Preview), or not staged by the operator yet
--   Degraded     Rejected (by the quality gate, a person or a failed rollout), or a Degraded
--                condition (an artifact outside the namespace's store)
--   Healthy      Approved, Production, Retired
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
if st == nil or st.stage == nil then
  return health("Progressing", "Waiting for the Noria operator to stage the version")
end
local degraded = condition("Degraded")
if degraded ~= nil and degraded.status == "True" then
  return health("Degraded", said(degraded))
end
local stage = st.stage
local why = st.message or ""
if stage == "Registered" or stage == "Candidate" then
  return health("Suspended", stage .. ": waiting for approval (noria.dev/approve or noria.dev/reject)")
end
if stage == "Rejected" then
  return health("Degraded", "Rejected: " .. why)
end
local traffic = tostring(st.traffic or 0) .. "% of traffic"
if stage == "Canary" or stage == "Shadow" or stage == "Preview" then
  return health("Progressing", stage .. ": " .. traffic)
end
if stage == "Production" then
  return health("Healthy", "Production: " .. traffic)
end
return health("Healthy", stage)
