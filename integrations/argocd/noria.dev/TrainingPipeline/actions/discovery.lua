-- retrain asks for one more training run. It is offered unless a request is already waiting: the
-- annotation's value differs from the last one the operator handled (status.triggers.manual.handled).
local actions = {}
local annotations = obj.metadata.annotations or {}
local requested = annotations["noria.dev/retrain"]
local manual = ((obj.status or {}).triggers or {}).manual or {}
local waiting = requested ~= nil and requested ~= manual.handled
actions["retrain"] = {disabled = waiting, displayName = "Retrain now"}
return actions
