-- Orthanc: forward every new chest radiograph study to secondreader once it is stable.
-- Install: add this file to "LuaScripts" in orthanc.json, and declare secondreader in
-- "DicomModalities", e.g. "secondreader": ["SECONDREADER", "secondreader.example.org", 11112].
-- secondreader's own results (Manufacturer "secondreader") are not forwarded back; re-forwarding a
-- study is harmless anyway (secondreader is idempotent on SOP Instance UID).

function OnStableStudy(studyId, tags, metadata)
  local series = ParseJson(RestApiGet('/studies/' .. studyId .. '/series'))
  local instances = {}
  for _, s in pairs(series) do
    local modality = s['MainDicomTags']['Modality']
    if modality == 'CR' or modality == 'DX' then
      for _, instanceId in pairs(s['Instances']) do
        table.insert(instances, instanceId)
      end
    end
  end
  if #instances > 0 then
    print('secondreader: forwarding ' .. #instances .. ' radiograph instance(s) of a stable study')
    for _, instanceId in pairs(instances) do
      SendToModality(instanceId, 'secondreader')  -- Orthanc 1.10 takes one resource id per call
    end
  end
end
