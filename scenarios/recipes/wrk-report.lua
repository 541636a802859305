-- wrk reports its summary as scalelab metric lines (one JSON object per line).
done = function(summary, latency, requests)
  local seconds = summary.duration / 1e6
  local e = summary.errors
  io.write(string.format('{"metric": "wrk_request_rate", "value": %f, "unit": "req/s"}\n',
                         summary.requests / seconds))
  for _, p in ipairs({50, 90, 99}) do
    io.write(string.format('{"metric": "wrk_latency_p%d", "value": %f, "unit": "s"}\n',
                           p, latency:percentile(p) / 1e6))
  end
  io.write(string.format('{"metric": "wrk_errors", "value": %d, "unit": "req"}\n',
                         e.connect + e.read + e.write + e.status + e.timeout))
end
