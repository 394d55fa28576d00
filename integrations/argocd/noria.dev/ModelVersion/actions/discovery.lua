-- approve and reject act on a version waiting for a person (stage Registered or Candidate) with no
-- decision written yet; the operator ignores both annotations in any other stage.
local actions = {}
local stage = (obj.status or {}).stage
local annotations = obj.metadata.annotations or {}
local waiting = (stage == "Registered" or stage == "Candidate")
  and annotations["noria.dev/approve"] == nil and annotations["noria.dev/reject"] == nil
actions["approve"] = {disabled = not waiting, displayName = "Approve"}
actions["reject"] = {disabled = not waiting, displayName = "Reject"}
return actions
