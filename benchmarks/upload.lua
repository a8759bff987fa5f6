-- wrk script: POST real photos as raw image bodies, alternating between the files
-- named in the IMAGES environment variable (colon-separated paths).
local bodies = {}
for path in string.gmatch(os.getenv("IMAGES"), "[^:]+") do
  local file = assert(io.open(path, "rb"))
  bodies[#bodies + 1] = file:read("*a")
  file:close()
end
local counter = 0
request = function()
  counter = counter + 1
  return wrk.format("POST", nil, {["Content-Type"] = "image/jpeg"}, bodies[(counter % #bodies) + 1])
end
