-- One more training run: noria.dev/retrain takes a new value (the operator starts a run for each new
-- value it sees; a run already in progress or a cooldown makes it wait, coalesced, not lost).
local os = require("os")
if obj.metadata.annotations == nil then
  obj.metadata.annotations = {}
end
obj.metadata.annotations["noria.dev/retrain"] = os.date("!%Y-%m-%dT%H:%M:%SZ")
return obj
