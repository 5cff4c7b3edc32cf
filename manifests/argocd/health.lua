-- Argo CD health of an agentfleet.io resource (ModelFleet, VectorIndex, AgentApp, Budget), read from the
-- conditions every kind reports. One source for the four `resource.customizations.health.agentfleet.io_<Kind>`
-- keys of argocd-cm (see kustomization.yaml).
local hs = {}

local function condition(conditions, wanted)
  if conditions == nil then
    return nil
  end
  for _, c in ipairs(conditions) do
    if c.type == wanted then
      return c
    end
  end
  return nil
end

if obj.status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the agentfleet operator to report status"
  return hs
end

local ready = condition(obj.status.conditions, "Ready")
local degraded = condition(obj.status.conditions, "Degraded")
local generation = obj.metadata.generation
-- A resource whose spec the operator rejected may report its generation only on the Ready condition.
local observed = obj.status.observedGeneration
if ready ~= nil and ready.observedGeneration ~= nil and (observed == nil or ready.observedGeneration > observed) then
  observed = ready.observedGeneration
end

if generation ~= nil and (observed == nil or observed < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

if ready == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the Ready condition"
  return hs
end

-- Degraded also carries an AgentApp whose evaluation gate failed (reason EvaluationRegressed): it still serves
-- (Ready stays True), but the regression must show.
if degraded ~= nil and degraded.status == "True" then
  hs.status = "Degraded"
  hs.message = degraded.message or degraded.reason or "Degraded"
  return hs
end

if ready.status == "False" and ready.reason == "InvalidSpec" then
  hs.status = "Degraded"
  hs.message = ready.message or "InvalidSpec"
  return hs
end

if ready.status == "True" then
  hs.status = "Healthy"
  hs.message = ready.message or ""
  return hs
end

hs.status = "Progressing"
hs.message = ready.message or ready.reason or "Not ready"
return hs
