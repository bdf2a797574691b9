-- wrk script: POST a small JSON body to the URL given on the command line.
-- With TOKEN set in the environment, every request carries `Authorization: Bearer $TOKEN`.
--   TOKEN=$(cargo run -q --release --example mint_token -- --sub alice --roles admin) \
--     wrk -t2 -c32 -d10s -s bench/wrk/post_json.lua http://127.0.0.1:18080/admin/users/42/ban
wrk.method = "POST"
wrk.body = '{"name":"bench","email":"bench@example.com"}'
wrk.headers["Content-Type"] = "application/json"
local token = os.getenv("TOKEN")
if token ~= nil and token ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. token
end

-- A run that got 401/503s instead of 201/202s must not pass for a fast one.
function done(summary, latency, requests)
  io.write(string.format("non-2xx/3xx responses: %d\n", summary.errors.status))
end
