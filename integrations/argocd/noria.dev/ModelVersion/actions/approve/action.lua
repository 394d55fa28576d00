-- Approved: a Rollout may serve it. noria.dev/approve holds who decided: the operator records it as
-- user/<value>, and the chart's admission policy admits the write only when the value is the
-- Kubernetes user name of whoever sends it. An Argo CD action cannot know the person who clicked
-- (Argo CD records that in its own ResourceActionRan Event on the Application); the API server sees
-- Argo CD's identity, so that is the honest value. Set it for your installation when generating
-- argocd-cm (integrations/argocd/generate_argocd_cm.py --kubernetes-user; docs/operations/argocd.md).
local kubernetesUser = "system:serviceaccount:argocd:argocd-server" -- ARGOCD_KUBERNETES_USER
local stage = (obj.status or {}).stage
if stage ~= "Registered" and stage ~= "Candidate" then
  error("only a Registered or Candidate version can be approved; " .. obj.metadata.name .. " is " .. tostring(stage), 0)
end
if obj.metadata.annotations == nil then
  obj.metadata.annotations = {}
end
obj.metadata.annotations["noria.dev/approve"] = kubernetesUser
return obj
